# -*- coding: utf-8 -*-
# Copyright: liverestore contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  binary:
    description:
      - The liverestore program on the managed host, a path or a name looked up in C(PATH).
    type: path
    default: liverestore
  state_dir:
    description:
      - Where liverestore keeps its records (its C(--state-dir)); its default, V(/var/lib/liverestore), when not set.
    type: path
  metrics_file:
    description:
      - Keep this file up to date in the Prometheus text format that node_exporter's textfile collector reads
        (liverestore's C(--metrics-file)), with progress, bytes written, state, last success and exit code,
        labelled by staging name and operation. Put it in the collector's directory, named C(*.prom).
      - A directory that cannot be written is a warning of liverestore's; the work goes on.
    type: path
notes:
  - Runs liverestore with C(--json) on the managed host, as root. Every liverestore error fails the task with
    the program's message in RV(ignore:msg), its exit code in RV(ignore:rc) and its stable error kind in
    RV(ignore:error_kind) (C(no_space), C(bad_image), C(verify_failed), ... as C(liverestore --help) lists them).
requirements:
  - liverestore on the managed host (a static build has no other needs).
"""

    RETURN = r"""
rc:
  description: liverestore's exit code (0 on success).
  returned: failure
  type: int
  sample: 13
error_kind:
  description: liverestore's stable error kind for RV(rc).
  returned: failure
  type: str
  sample: no_space
notes:
  description: What liverestore noted while it worked (its C(note) events).
  returned: always
  type: list
  elements: str
"""
