#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: liverestore contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: activate
short_description: Make the next boot of the managed host start a staged image, once, as a trial
description:
  - Runs C(liverestore activate). It re-reads every staged byte and copies the image's kernel and initrd
    where the boot loader reads them. Then it arms a one-shot boot of them (UEFI C(BootNext), or GRUB's
    C(next_entry)). If the restored system does not come up and commit (M(liverestore.liverestore.commit),
    or the auto-commit M(liverestore.liverestore.customize) puts in), the boot after the trial starts the
    old system again.
  - Reboot with M(ansible.builtin.reboot) afterwards.
  - Idempotent. When O(name) is already the activated staging, nothing is done (C(changed=false)).
    Another staging that is activated makes liverestore refuse (C(invalid_state));
    M(liverestore.liverestore.rollback) it first.
version_added: 0.1.0
author:
  - liverestore developers (@liverestore)
extends_documentation_fragment:
  - liverestore.liverestore.common
attributes:
  check_mode:
    support: full
    description: Checks that the staging exists and says what would change.
  diff_mode:
    support: full
    description: The boot state (activated staging, next boot, committed, boot entry) before and after.
options:
  name:
    description: The staging to boot (for a whole-disk image, the name it was staged under).
    type: str
    required: true
  loader:
    description: Which boot loader to arm; V(auto) uses UEFI when efivarfs is writable, GRUB otherwise.
    type: str
    choices: [auto, uefi, grub]
    default: auto
  boot:
    description: How the restored system finds its root; V(auto) boots natively when the image allows it.
    type: str
    choices: [auto, native, mapped]
    default: auto
  esp:
    description: The mounted EFI system partition (UEFI); liverestore's default when not set.
    type: path
  grub_dir:
    description: GRUB's directory, with C(grub.cfg) and C(grubenv) (GRUB); liverestore's default when not set.
    type: path
  append:
    description: Extra kernel arguments for the restored system.
    type: str
  helper:
    description: The static liverestore for the early-boot step (by default the program itself, when static).
    type: path
  trial_deadline:
    description:
      - Unless the restored system commits within this long (C(90s), C(30min), C(1h); at least 60 s), the
        watchdog resets the machine, which then starts the old system. V(none) for no deadline.
    type: str
"""

EXAMPLES = r"""
- name: Boot the staged image once
  liverestore.liverestore.activate:
    name: lab
    trial_deadline: 20min
  register: act

- name: Reboot into the trial
  ansible.builtin.reboot:
    reboot_timeout: 1800
  when: act is changed
"""

RETURN = r"""
result:
  description: What C(liverestore activate --json) reported (the C(activation)), when something was done.
  returned: changed
  type: dict
activation:
  description: The activation as C(liverestore status) reports it (name, kernel, arguments, boot entry, ...).
  returned: success
  type: dict
boot_entry:
  description: The boot entry armed, C(Boot0004) (UEFI) or the GRUB menu entry's id.
  returned: success
  type: str
  sample: Boot0004
next_boot:
  description: What the next boot starts.
  returned: success
  type: str
  sample: restored system (trial, once)
committed:
  description: Whether the activated system is already the default.
  returned: success
  type: bool
status:
  description: C(liverestore status --json) after the change.
  returned: changed
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.liverestore.liverestore.plugins.module_utils.liverestore import (
    LiverestoreCli,
    argument_spec,
    boot_change,
    boot_entry,
    members,
    option_args,
    predicted_boot_change,
)


def is_activated(activation, name):
    if not activation:
        return False
    names = [activation.get("name")] + list(activation.get("companions") or [])
    prefix = name + "-p"
    return any(n == name or (n and n.startswith(prefix) and n[len(prefix):].isdigit()) for n in names)


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            name=dict(type="str", required=True),
            loader=dict(type="str", choices=["auto", "uefi", "grub"], default="auto"),
            boot=dict(type="str", choices=["auto", "native", "mapped"], default="auto"),
            esp=dict(type="path"),
            grub_dir=dict(type="path"),
            append=dict(type="str"),
            helper=dict(type="path"),
            trial_deadline=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    name = p["name"]
    cli = LiverestoreCli(module)
    status = cli.status()
    activation = status.get("activation")
    if is_activated(activation, name) and not status.get("trial_ended"):
        module.exit_json(
            changed=False,
            activation=activation,
            boot_entry=boot_entry(activation),
            next_boot=status.get("next_boot"),
            committed=status.get("committed", False),
            notes=cli.notes,
        )
    if module.check_mode:
        if not members(cli.stagings(), name):
            module.fail_json(msg="no staged image named '%s'" % name, rc=17, exit_code=17, error_kind="not_found")
        predicted_boot_change(
            module, cli, status, dict(activated=name, next_boot="restored system (trial, once)", committed=False)
        )
    args = ["activate", name, "--loader", p["loader"], "--boot", p["boot"]]
    args += option_args(p, options=("esp", "grub_dir", "append", "helper", "trial_deadline"))
    boot_change(module, cli, args, status)


if __name__ == "__main__":
    main()
