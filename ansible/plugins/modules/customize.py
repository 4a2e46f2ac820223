#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: liverestore contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: customize
short_description: Change a staged system before its first boot, so it comes back as this machine
description:
  - Runs C(liverestore customize). The staged bytes are verified, the image's root filesystem is changed
    in place (network configuration carried over, files preserved, a new identity, a host name, drivers,
    fstab entries made C(nofail), a health-gated auto-commit), and every chunk is hashed anew.
  - Idempotent with O(once=true) (the default). A staging whose record lists a customization since it was
    staged is left alone (C(changed=false)). An interrupted customization is finished by running again.
version_added: 0.1.0
author:
  - liverestore developers (@liverestore)
extends_documentation_fragment:
  - liverestore.liverestore.common
attributes:
  check_mode:
    support: full
    description: Checks that the staging exists and says whether it would change it.
  diff_mode:
    support: none
    description: Nothing to compare; see the return values.
options:
  name:
    description: The staging to change.
    type: str
    required: true
  preserve:
    description: Files or trees copied from the running system into the restored one, at the same paths.
    type: list
    elements: path
    default: []
  carry_network:
    description: Copy this system's network configuration and C(/etc/resolv.conf), so a remote machine comes back online.
    type: bool
    default: false
  new_identity:
    description: A machine of its own, with an empty C(/etc/machine-id) and new SSH host keys.
    type: bool
    default: false
  hostname:
    description: Set C(/etc/hostname) and the C(127.0.1.1) line of C(/etc/hosts).
    type: str
  inject_drivers:
    description: Copy firmware and, for the same kernel version, modules this machine uses and the image lacks.
    type: bool
    default: false
  fix_fstab:
    description: Make C(nofail) the C(/etc/fstab) entries that name devices the restored system will not have.
    type: bool
    default: false
  auto_commit:
    description:
      - Make the trial commit itself once O(health) passes; if it does not pass within O(commit_within) the
        machine reboots into the old system. Needs systemd in the image.
    type: bool
    default: false
  health:
    description: The health check for O(auto_commit), a shell command (liverestore's default when not set).
    type: str
  commit_within:
    description: How long O(health) may take to pass (C(90s), C(10min)).
    type: str
  helper:
    description: The static liverestore put into the image for O(auto_commit).
    type: path
  source_root:
    description: Take preserved files, network configuration and drivers from the system mounted here.
    type: path
  once:
    description: Leave a staging alone that was already customized since it was staged.
    type: bool
    default: true
"""

EXAMPLES = r"""
- name: Bring the image back as this machine, committing itself when healthy
  liverestore.liverestore.customize:
    name: lab
    carry_network: true
    preserve: [/etc/ssh]
    auto_commit: true
    commit_within: 15min
"""

RETURN = r"""
changes:
  description: What was changed in the image (C(what), C(path), C(detail)).
  returned: changed
  type: list
  elements: dict
sha256:
  description: The staged image's SHA-256 after the change.
  returned: changed
  type: str
result:
  description: What C(liverestore customize --json) reported (C(customized)).
  returned: changed
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.liverestore.liverestore.plugins.module_utils.liverestore import (
    LiverestoreCli,
    argument_spec,
    option_args,
)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            name=dict(type="str", required=True),
            preserve=dict(type="list", elements="path", default=[]),
            carry_network=dict(type="bool", default=False),
            new_identity=dict(type="bool", default=False),
            hostname=dict(type="str"),
            inject_drivers=dict(type="bool", default=False),
            fix_fstab=dict(type="bool", default=False),
            auto_commit=dict(type="bool", default=False),
            health=dict(type="str"),
            commit_within=dict(type="str"),
            helper=dict(type="path"),
            source_root=dict(type="path"),
            once=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    name = p["name"]
    cli = LiverestoreCli(module)
    info = cli.info(name)
    if info is None:
        module.fail_json(msg="no staged image named '%s'" % name, rc=17, exit_code=17, error_kind="not_found")
    image = info["record"].get("image", {})
    if p["once"] and image.get("customized") and not image.get("customizing"):
        module.exit_json(changed=False, changes=[], sha256=image.get("sha256"), notes=cli.notes)
    if module.check_mode:
        module.exit_json(changed=True, changes=[], notes=cli.notes)
    args = ["customize", name]
    for path in p["preserve"]:
        args += ["--preserve", path]
    args += option_args(
        p,
        flags=("carry_network", "new_identity", "inject_drivers", "fix_fstab", "auto_commit"),
        options=("hostname", "health", "commit_within", "helper", "source_root"),
    )
    done = cli.run_or_fail(args)
    customized = done.get("customized", {})
    module.exit_json(
        changed=True,
        changes=customized.get("changes", []),
        sha256=customized.get("sha256"),
        result=customized,
        notes=cli.notes,
    )


if __name__ == "__main__":
    main()
