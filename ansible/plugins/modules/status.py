#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: liverestore contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: status
short_description: Which system runs, what is activated and staged, and how far a staging has got
description:
  - Reports C(liverestore status) (which system runs, what is activated, what the next boot starts,
    whether the restored system is committed) and the host's stagings (C(liverestore list)).
  - With O(name), also that staging's state and progress, also while a staging runs (under C(async)), so a
    play can poll it.
  - Changes nothing.
version_added: 0.1.0
author:
  - liverestore developers (@liverestore)
extends_documentation_fragment:
  - liverestore.liverestore.common
attributes:
  check_mode:
    support: full
    description: Reads only.
  diff_mode:
    support: none
    description: Nothing to compare; see the return values.
options:
  name:
    description:
      - A staging (or the name a whole-disk image was staged under) to report on.
    type: str
  must_exist:
    description: Fail (C(not_found)) when O(name) is given and no such staging exists.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Wait for an async staging, showing its progress with -vv
  liverestore.liverestore.status:
    name: lab
  register: st
  until: st.state != 'staging' and st.state != 'allocating'
  retries: 360
  delay: 5

- name: Is the restored system committed?
  liverestore.liverestore.status:
  register: st
  failed_when: not (st.booted_restored and st.committed)
"""

RETURN = r"""
name:
  description: The staging asked about.
  returned: when O(name) is given
  type: str
state:
  description:
    - The staging's state, C(allocating), C(staging), C(complete) or C(failed); C(absent) when there is none.
    - For a whole-disk image, the least advanced of its partitions.
  returned: when O(name) is given
  type: str
  sample: staging
progress:
  description:
    - The fraction of the image written and synced (0.0 to 1.0), as recorded at the staging's checkpoints
      (every 5 s or 1 GiB). The metrics file (O(metrics_file)) follows it more closely.
  returned: when O(name) is given
  type: float
  sample: 0.42
bytes_written:
  description: Image bytes written and synced so far.
  returned: when O(name) is given
  type: int
image_size:
  description: The image's size in bytes.
  returned: when O(name) is given
  type: int
msg:
  description: The above in words, for a person watching the play.
  returned: always
  type: str
  sample: "lab: staging 42% (451 MiB of 1.0 GiB)"
stagings:
  description: Every staging on the host, as C(liverestore list --json) reports them.
  returned: always
  type: list
  elements: dict
booted_restored:
  description: Whether the running system was booted as a restored image.
  returned: always
  type: bool
committed:
  description: Whether the activated restored system is the boot loader's default (it was committed).
  returned: always
  type: bool
activated:
  description: The name of the activated staging, or null.
  returned: always
  type: str
next_boot:
  description: What the next boot starts, in words (C(restored system (trial, once)), C(old system ...), ...).
  returned: always
  type: str
boot_entry:
  description: The boot entry of the activation (C(Boot0003) or the GRUB menu entry), or null.
  returned: always
  type: str
status:
  description: Everything C(liverestore status --json) reported.
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.liverestore.liverestore.plugins.module_utils.liverestore import (
    LiverestoreCli,
    argument_spec,
    boot_entry,
    members,
    progress_of,
)

ORDER = ["allocating", "staging", "failed", "complete"]


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n = n / 1024.0


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            name=dict(type="str"),
            must_exist=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    name = module.params["name"]
    cli = LiverestoreCli(module)
    status = cli.status()
    stagings = cli.stagings()
    activation = status.get("activation") or {}
    result = dict(
        changed=False,
        status=status,
        stagings=list(stagings.values()),
        booted_restored=status.get("booted_restored", False),
        committed=status.get("committed", False),
        activated=activation.get("name"),
        next_boot=status.get("next_boot"),
        boot_entry=boot_entry(activation),
        notes=cli.notes,
    )
    msg = ["next boot: %s" % status.get("next_boot")]
    if name:
        rows = [stagings[n] for n in members(stagings, name)]
        if not rows:
            if module.params["must_exist"]:
                module.fail_json(msg="no staged image named '%s'" % name, rc=17, exit_code=17, error_kind="not_found", **result)
            result.update(name=name, state="absent", progress=0.0, bytes_written=0, image_size=0)
            msg.insert(0, "%s: absent" % name)
        else:
            size = sum(r.get("image_size", 0) for r in rows)
            written = sum(r.get("image_size", 0) if r.get("state") == "complete" else r.get("written", 0) for r in rows)
            state = min((r.get("state") for r in rows), key=lambda s: ORDER.index(s) if s in ORDER else 0)
            progress = progress_of(dict(state=state, written=written, image_size=size))
            result.update(name=name, state=state, progress=progress, bytes_written=written, image_size=size)
            msg.insert(0, "%s: %s %d%% (%s of %s)" % (name, state, int(progress * 100), human(written), human(size)))
    result["msg"] = "; ".join(msg)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
