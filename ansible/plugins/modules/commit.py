#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: liverestore contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: commit
short_description: Keep the restored system the managed host runs after a trial boot
description:
  - Runs C(liverestore commit) in the restored system. It becomes the boot loader's default (UEFI
    C(BootOrder), or liverestore's GRUB default), and the trial's watchdog is stopped.
  - Idempotent. A system that is already committed is left alone (C(changed=false)).
  - Fails (C(invalid_state)) on a host that does not run a restored system.
version_added: 0.1.0
author:
  - liverestore developers (@liverestore)
extends_documentation_fragment:
  - liverestore.liverestore.common
attributes:
  check_mode:
    support: full
    description: Says whether it would commit, and fails where commit would.
  diff_mode:
    support: full
    description: The boot state before and after.
options: {}
"""

EXAMPLES = r"""
- name: Keep the restored system once it answers
  liverestore.liverestore.commit:
"""

RETURN = r"""
result:
  description: What C(liverestore commit --json) reported (C(committed)), when something was done.
  returned: changed
  type: dict
committed:
  description: Whether the restored system is now the default.
  returned: success
  type: bool
  sample: true
next_boot:
  description: What the next boot starts.
  returned: success
  type: str
  sample: restored system (default)
boot_entry:
  description: The restored system's boot entry.
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.liverestore.liverestore.plugins.module_utils.liverestore import (
    LiverestoreCli,
    argument_spec,
    boot_change,
    boot_entry,
    predicted_boot_change,
)


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    cli = LiverestoreCli(module)
    status = cli.status()
    if status.get("booted_restored") and status.get("committed"):
        module.exit_json(
            changed=False,
            committed=True,
            next_boot=status.get("next_boot"),
            boot_entry=boot_entry(status.get("activation")),
            notes=cli.notes,
        )
    if module.check_mode:
        if not status.get("booted_restored"):
            module.fail_json(
                msg="this is not a restored system on its trial: nothing to commit",
                rc=22,
                exit_code=22,
                error_kind="invalid_state",
            )
        predicted_boot_change(
            module, cli, status, dict(committed=True, next_boot="restored system (default)"), committed=True
        )
    boot_change(module, cli, ["commit"], status)


if __name__ == "__main__":
    main()
