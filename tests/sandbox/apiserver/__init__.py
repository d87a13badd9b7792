"""The real kube-apiserver's room: its set-up (``kubeapiserver``), the sites it calls (the guard-shaped token
webhook ``guard`` with ``jwtverify``, the kubelet endpoint ``kubelet`` with ``execspdy``, the admission webhook
``admission``), the load balancer of ``up --apiservers N`` (``lb``), the ground-truth capture (``capture``), the
cluster's in-process state shared with the emulator (``state.APIServer``), and the hostile-server harness
(``hostile/``) for what a real server cannot be made to do."""
