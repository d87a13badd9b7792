#!/usr/bin/env python
# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Azure CLI extension ``kmsverify``: ``az aksarc kms verify``."""

from setuptools import find_packages, setup

# Keep equal to the top entry of HISTORY.rst. A preview is a pre-release (1.0.0bN), as azure-cli's extension
# versioning guidelines ask; the version alone makes az treat it as preview (no azext.isPreview flag).
VERSION = '1.0.0b1'

CLASSIFIERS = [
    'Development Status :: 4 - Beta',
    'Intended Audience :: Developers',
    'Intended Audience :: System Administrators',
    'Programming Language :: Python',
    'Programming Language :: Python :: 3',
    'Programming Language :: Python :: 3.10',
    'Programming Language :: Python :: 3.11',
    'Programming Language :: Python :: 3.12',
    'Programming Language :: Python :: 3.13',
    'License :: OSI Approved :: MIT License',
]

# azure-cli-core and knack come with az itself.
# Up to 35 the kubernetes client is about 36 MB installed and pure Python; 36 adds aiohttp and its native libraries,
# 37 also pydantic, and its own package alone is 126 MB. 24.2.0 is the oldest client the extension supports.
DEPENDENCIES = [
    'kubernetes>=24.2.0,<36',
    # kubelogin's spn, msi, workloadidentity and azurepipelines sign-ins. It runs on az's own msal, not on the copy
    # installed beside it (az has imported msal before it loads an extension), so its msal requirement must hold
    # for every az the extension claims: 1.19 to 1.25 ask for msal>=1.30, and their managed identity needs 1.31
    # (az 2.65.0 on); 1.26 on ask for msal>=1.39 (az 2.91 on). Tested on az 2.65.0 by `make test-az-min`.
    'azure-identity>=1.19.0,<1.26',
]

with open('README.md', 'r', encoding='utf-8') as f:
    README = f.read()
with open('HISTORY.rst', 'r', encoding='utf-8') as f:
    HISTORY = f.read()

setup(
    name='kmsverify',
    version=VERSION,
    description='Prove that Kubernetes Secrets of AKS on Azure Local clusters are KMS-encrypted at rest in etcd.',
    long_description=README + '\n\n' + HISTORY,
    long_description_content_type='text/markdown',
    license='MIT',
    author='kmsverify contributors',
    url='https://github.com/Azure/azure-cli-extensions',
    classifiers=CLASSIFIERS,
    python_requires='>=3.10',
    packages=find_packages(include=['azext_kmsverify', 'azext_kmsverify.*']),
    install_requires=DEPENDENCIES,
    package_data={'azext_kmsverify': ['azext_metadata.json', 'schemas/*.json']},
)
