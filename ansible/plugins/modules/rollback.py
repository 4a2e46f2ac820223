#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: liverestore contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: rollback
short_description: Undo an activation, from the old system or from the restored one
description:
  - Runs C(liverestore rollback). In the old system it removes the one-shot choice, the default, the boot
    entry and the copied kernel and initrd. In the restored system it removes the boot loader's choice of
    it, so the next boot starts the old system.
  - Idempotent. Where nothing is activated and the next boot starts the old system, nothing is done
    (C(changed=false)).
version_added: 0.1.0
author:
  - liverestore developers (@liverestore)
extends_documentation_fragment:
  - liverestore.liverestore.common
attributes:
  check_mode:
    support: full
    description: Says whether it would roll back.
  diff_mode:
    support: full
    description: The boot state before and after.
options: {}
"""

EXAMPLES = r"""
- name: Take the activation back
  liverestore.liverestore.rollback:
"""

RETURN = r"""
result:
  description: What C(liverestore rollback --json) reported (C(rolled_back)), when something was done.
  returned: changed
  type: dict
next_boot:
  description: What the next boot starts.
  returned: success
  type: str
  sample: old system (nothing is activated)
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.liverestore.liverestore.plugins.module_utils.liverestore import (
    LiverestoreCli,
    argument_spec,
    boot_change,
    predicted_boot_change,
)


def main():
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    cli = LiverestoreCli(module)
    status = cli.status()
    old_next = (status.get("next_boot") or "").startswith("old system")
    if old_next and (status.get("booted_restored") or not status.get("activation")):
        module.exit_json(changed=False, next_boot=status.get("next_boot"), notes=cli.notes)
    if module.check_mode:
        after = dict(committed=False, next_boot="old system")
        if not status.get("booted_restored"):
            after.update(activated=None, boot_entry=None)
        predicted_boot_change(module, cli, status, after)
    boot_change(module, cli, ["rollback"], status)


if __name__ == "__main__":
    main()
