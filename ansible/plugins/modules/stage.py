#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: liverestore contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: stage
short_description: Stage a disk or partition image onto the disk the managed host runs from
description:
  - Writes the image into the pinned extents of a container file on a filesystem of the host's own disk
    (and, with O(unallocated), its unallocated space), straight through the raw disk, with
    C(liverestore stage). Nothing boots it until M(liverestore.liverestore.activate).
  - Idempotent. A complete staging of the same name and the same image (the same O(sha256), or without
    one the same O(src)) is left alone, with C(changed=false). An interrupted staging of the same image
    is resumed. A staging of the same name with another image is refused unless O(replace=true).
  - In check mode it runs C(liverestore plan) instead, which writes nothing, and fails as staging would
    (no room, an unsupported filesystem, ...).
  - A whole-disk image (GPT or MBR) becomes one staging per partition, O(name)-p1, O(name)-p2, ...
  - Long stagings work with C(async) and C(poll); M(liverestore.liverestore.status) with O(name) reports
    the progress of a staging while it runs.
version_added: 0.1.0
author:
  - liverestore developers (@liverestore)
extends_documentation_fragment:
  - liverestore.liverestore.common
attributes:
  check_mode:
    support: full
    description: Runs C(liverestore plan), which writes nothing.
  diff_mode:
    support: none
    description: Nothing to compare; see the return values.
options:
  name:
    description: Name of the staging (letters, digits, C(.), C(-), C(_)).
    type: str
    required: true
  src:
    description:
      - The image on the managed host (a file or a block device) or an C(http://)/C(https://) URL, which
        is streamed, never stored (a dropped connection is resumed with a range request).
      - Compression (gzip, xz, zstd) and layout (raw, qcow2, VHD, VHDX, Android sparse, raw with a bmap)
        are recognized by content.
      - Needed unless an interrupted staging of O(name) is resumed from the path it recorded.
    type: str
  dir:
    description:
      - Directories on mounted ext4, xfs or vfat filesystems of the host's disk, filled in this order;
        the first holds the on-disk header.
    type: list
    elements: path
    default: []
  unallocated:
    description: Also use the disk's space outside every partition, after the directories.
    type: bool
    default: false
  contiguous:
    description:
      - Put the image whole in one unallocated range, so that M(liverestore.liverestore.activate) can boot it
        natively (with O(unallocated)).
    type: bool
    default: false
  lvm_free:
    description:
      - Put the image whole in a new logical volume C(lr-NAME) of this volume group (its free extents on
        the host's disk; LVM's C(lvcreate) makes it), with only the on-disk header in the first O(dir).
      - M(liverestore.liverestore.activate) then boots it natively from the volume when the image's
        initrd has LVM, mapped otherwise; M(liverestore.liverestore.discard) removes the volume.
    type: str
  sha256:
    description:
      - The image's SHA-256 (64 hex digits). It must match before the staging counts as complete; a
        mismatch fails the task (C(verify_failed)) and leaves the staging marked failed.
      - Also what makes a later run of the same task see the image as already staged.
    type: str
  signature:
    description:
      - A detached signature of the image file (OpenPGP C(.sig)/C(.asc) or minisign C(.minisig)), a path
        or URL on the managed host. By default C(IMAGE.sig), C(IMAGE.asc) or C(IMAGE.minisig) next to the
        image is used when the host has trusted keys.
      - It is checked over the bytes staged, in the same pass; a signature that does not hold fails the
        task (C(signature_rejected), rc 26) and leaves the staging marked failed.
    type: str
  trusted_keys:
    description: The directory of trusted public keys on the managed host (default C(/etc/liverestore/trusted.d)).
    type: path
  size:
    description: The image's size (bytes, or with K, M, G or T), for a compressed stream that does not declare it.
    type: str
  keep_free:
    description: Leave at least this much free on every filesystem (bytes, or with K, M, G or T).
    type: str
  max_file_size:
    description: Split containers into files of at most this size.
    type: str
  make_room:
    description: A file of glob patterns of files liverestore may delete, least critical first, when the image does not fit.
    type: path
  bmap:
    description: A bmap file for a raw image (by default C(IMAGE.bmap) next to a local image).
    type: path
  no_bmap:
    description: Ignore a C(IMAGE.bmap) next to the image.
    type: bool
    default: false
  partition:
    description: For a whole-disk image, stage only this partition, as O(name).
    type: int
  whole_disk:
    description: Stage a whole-disk image as one image, partition table and all.
    type: bool
    default: false
  replace:
    description:
      - When a staging of O(name) holds another image (or failed), discard it and stage anew. Without it such
        a staging fails the task (C(name_in_use)), so an image is never thrown away by accident.
      - A staging that is activated is never replaced (M(liverestore.liverestore.rollback) it first).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Stage the lab image from the web server
  liverestore.liverestore.stage:
    name: lab
    src: http://images.example.com/lab-2026-12.img.zst
    sha256: "{{ lab_image_sha256 }}"
    dir: [/var/tmp]
    metrics_file: /var/lib/prometheus/node-exporter/liverestore.prom
  async: 3600
  poll: 10

- name: Stage into two filesystems and the unallocated space
  liverestore.liverestore.stage:
    name: web
    src: /srv/images/web.qcow2
    dir: [/, /data]
    unallocated: true

- name: What staging would do (writes nothing)
  liverestore.liverestore.stage:
    name: web
    src: /srv/images/web.qcow2
    dir: [/var/tmp]
  check_mode: true
  register: plan
"""

RETURN = r"""
name:
  description: The name staged.
  returned: always
  type: str
  sample: lab
state:
  description: The staging's state, C(complete) when the task succeeded.
  returned: success
  type: str
  sample: complete
progress:
  description: The fraction of the image staged (1.0 when complete).
  returned: success
  type: float
  sample: 1.0
bytes_written:
  description: Bytes written to the disk by this run (0 when the image was already staged).
  returned: success
  type: int
  sample: 1073741824
sha256:
  description: The image's SHA-256, when it was computed (always, when O(sha256) was given).
  returned: success
  type: str
  sample: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
signature:
  description:
    - The signature check that held (format, key fingerprint or minisign key ID, signer, signing time,
      signature and key file), when the image was signed; null otherwise.
  returned: success
  type: dict
  sample:
    format: openpgp
    key: E399F87FF1F50F48872375DEC5B9820B46D5CE3C
    signer: Image Builder <images@example.org>
resumed:
  description: Whether an interrupted staging of the same image was continued.
  returned: success
  type: bool
stagings:
  description:
    - One entry per staging made (several for a whole-disk image), as C(liverestore stage --json) reports
      them, or as recorded when nothing was done.
  returned: success
  type: list
  elements: dict
  sample:
    - name: lab
      state: complete
      image_size: 1073741824
      sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      container: /var/tmp/lab.liverestore
      disk: /dev/sda
plan:
  description: In check mode, what C(liverestore plan --json) reported.
  returned: check mode
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.liverestore.liverestore.plugins.module_utils.liverestore import (
    LiverestoreCli,
    argument_spec,
    members,
    option_args,
    progress_of,
)


def staging_args(p):
    """The options `stage` and `plan` share, as arguments."""
    args = []
    for d in p["dir"]:
        args += ["--dir", d]
    return args + option_args(
        p,
        flags=("unallocated", "contiguous", "no_bmap", "whole_disk"),
        options=("keep_free", "max_file_size", "make_room", "size", "bmap", "partition", "sha256", "lvm_free"),
    )


def image_sha256(record):
    image = record.get("image", {})
    part = image.get("partition") or {}
    return part.get("image_sha256") or image.get("expected_sha256") or image.get("sha256")


def same_image(record, src, sha256):
    """Whether a recorded staging holds the image asked for."""
    if sha256:
        recorded = image_sha256(record)
        return recorded is not None and recorded.lower() == sha256.lower()
    source = record.get("image", {}).get("source")
    return src is not None and src != "-" and source == src


def recorded(info):
    record = info["record"]
    image = record.get("image", {})
    return dict(
        name=record.get("name"),
        state=record.get("state"),
        image_size=image.get("size"),
        sha256=image.get("sha256"),
        image_sha256=image_sha256(record),
        kind=image.get("kind"),
        signature=image.get("signature"),
        container=record.get("container", {}).get("path"),
        disk=info.get("disk"),
        map_valid=info.get("map_valid"),
    )


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(
            name=dict(type="str", required=True),
            src=dict(type="str"),
            dir=dict(type="list", elements="path", default=[]),
            unallocated=dict(type="bool", default=False),
            contiguous=dict(type="bool", default=False),
            lvm_free=dict(type="str"),
            sha256=dict(type="str"),
            signature=dict(type="str"),
            trusted_keys=dict(type="path"),
            size=dict(type="str"),
            keep_free=dict(type="str"),
            max_file_size=dict(type="str"),
            make_room=dict(type="path"),
            bmap=dict(type="path"),
            no_bmap=dict(type="bool", default=False),
            partition=dict(type="int"),
            whole_disk=dict(type="bool", default=False),
            replace=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    name = p["name"]
    cli = LiverestoreCli(module)
    result = dict(changed=False, name=name, resumed=False, bytes_written=0, notes=cli.notes)

    stagings = cli.stagings()
    names = members(stagings, name)
    resume = False
    if names:
        infos = [cli.info(n) for n in names]
        same = all(i is not None and same_image(i["record"], p["src"], p["sha256"]) for i in infos)
        states = set(stagings[n]["state"] for n in names)
        if same and states == set(["complete"]):
            result.update(
                state="complete",
                progress=1.0,
                stagings=[recorded(i) for i in infos],
                sha256=infos[0]["record"]["image"].get("sha256") if len(infos) == 1 else None,
                signature=infos[0]["record"]["image"].get("signature"),
            )
            module.exit_json(**result)
        if same and states <= set(["staging", "allocating"]):
            resume = True
        elif not p["replace"]:
            module.fail_json(
                msg="a staging named '%s' already holds %s (%s); set replace=true to discard it and stage this image"
                % (
                    name,
                    "another image" if not same else "this image, in state " + "/".join(sorted(states)),
                    ", ".join(names),
                ),
                rc=16,
                exit_code=16,
                error_kind="name_in_use",
                **result
            )
    if not resume and not p["src"]:
        module.fail_json(msg="src is needed to stage '%s'" % name, rc=2, exit_code=2, error_kind="usage", **result)

    if module.check_mode:
        if resume:
            result.update(changed=True, resumed=True, progress=progress_of(stagings[names[0]]))
            module.exit_json(**result)
        plan = cli.run_or_fail(["plan", p["src"]] + staging_args(p), **result)
        result.update(changed=True, plan=plan)
        module.exit_json(**result)

    if names and not resume:
        cli.run_or_fail(["discard", name], **result)
    if resume:
        args = ["stage", "--resume", name]
        if p["src"]:
            args.append(p["src"])
        result["resumed"] = True
    else:
        args = ["stage", p["src"], "--name", name] + staging_args(p)
        args += option_args(p, options=("signature", "trusted_keys"))
    done = cli.run_or_fail(args, **result)
    made = done.get("stagings", [])
    result.update(
        changed=True,
        state="complete",
        progress=1.0,
        stagings=made,
        bytes_written=sum(s.get("disk_written", 0) for s in made),
        sha256=made[0].get("image_sha256") or made[0].get("sha256") if made else None,
        signature=made[0].get("signature") if made else None,
    )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
