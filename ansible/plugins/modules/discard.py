#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: liverestore contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: discard
short_description: Remove a staged image and give its space back
description:
  - Runs C(liverestore discard). The on-disk header is wiped, and the container is unpinned and deleted.
    Space outside every partition is simply free again.
  - Idempotent. A staging that does not exist is not an error (C(changed=false)).
  - An activated staging is refused by liverestore (C(invalid_state)); M(liverestore.liverestore.rollback)
    it first.
version_added: 0.1.0
author:
  - liverestore developers (@liverestore)
extends_documentation_fragment:
  - liverestore.liverestore.common
attributes:
  check_mode:
    support: full
    description: Says whether it would discard.
  diff_mode:
    support: none
    description: Nothing to compare; see the return values.
options:
  name:
    description: The staging (or the name a whole-disk image was staged under, for all its partitions).
    type: str
    required: true
  force:
    description: Also discard when the state file is damaged.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Free the space of an old image
  liverestore.liverestore.discard:
    name: lab-2026-11
"""

RETURN = r"""
discarded:
  description: The stagings removed, with their containers.
  returned: changed
  type: list
  elements: dict
  sample:
    - name: lab-2026-11
      container: /var/tmp/lab-2026-11.liverestore
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.liverestore.liverestore.plugins.module_utils.liverestore import (
    LiverestoreCli,
    LiverestoreError,
    argument_spec,
    members,
)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            name=dict(type="str", required=True),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    name = module.params["name"]
    cli = LiverestoreCli(module)
    names = members(cli.stagings(), name)
    if not names and not module.params["force"]:
        module.exit_json(changed=False, discarded=[], notes=cli.notes)
    if module.check_mode:
        module.exit_json(changed=True, discarded=[dict(name=n) for n in names], notes=cli.notes)
    args = ["discard", name] + (["--force"] if module.params["force"] else [])
    try:
        done = cli.run(args)
    except LiverestoreError as e:
        if e.kind == "not_found" and not names:
            module.exit_json(changed=False, discarded=[], notes=cli.notes)
        cli.fail(e)
    module.exit_json(changed=True, discarded=done.get("discarded", []), notes=cli.notes)


if __name__ == "__main__":
    main()
