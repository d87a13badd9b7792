# --------------------------------------------------------------------------------------------
# Copyright (c) kmsverify contributors. Licensed under the MIT License.
# --------------------------------------------------------------------------------------------
"""Command loader for ``az aksarc kms verify``.

``az`` imports this module, ``commands`` and ``_params`` on every call that may reach the command, so they
import nothing heavy (no ``kubernetes``, ``azure.identity`` or crypto); ``custom`` and below do that lazily.
"""

from __future__ import annotations

from azure.cli.core import AzCommandsLoader

from azext_kmsverify._help import helps  # pylint: disable=unused-import  # noqa: F401  # registers the help


class KmsVerifyCommandsLoader(AzCommandsLoader):

    def __init__(self, cli_ctx=None):
        from azure.cli.core.commands import CliCommandType
        custom = CliCommandType(operations_tmpl='azext_kmsverify.custom#{}')
        super().__init__(cli_ctx=cli_ctx, custom_command_type=custom)

    def load_command_table(self, args):
        from azext_kmsverify.commands import load_command_table
        load_command_table(self, args)
        return self.command_table

    def load_arguments(self, command):
        from azext_kmsverify._params import load_arguments
        if getattr(self.cli_ctx, 'invocation', None) is None:
            # Loaded outside an az invocation (tools, tests): there is no command string to filter by.
            # pylint: disable-next=attribute-defined-outside-init  # AzCommandsLoader.__init__ sets it (not inferred)
            self.skip_applicability = True
        load_arguments(self, command)


COMMAND_LOADER_CLS = KmsVerifyCommandsLoader
