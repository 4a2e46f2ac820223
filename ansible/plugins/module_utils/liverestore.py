# -*- coding: utf-8 -*-
# Copyright: liverestore contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Drive the liverestore command line with --json from an Ansible module.

Every module of this collection goes through LiverestoreCli: it runs the
program with --json, reads its JSON lines (progress and note events, then
one result or error object, see docs/json-output.md in the liverestore
repository) and turns an error into a failed task with the program's own
message, exit code and stable error kind.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

# The exit codes liverestore documents (liverestore --help), by error kind.
EXIT_CODES = {
    1: "internal",
    2: "usage",
    10: "not_root",
    11: "unsupported_filesystem",
    12: "unsupported_device",
    13: "no_space",
    14: "bad_image",
    15: "invalid_name",
    16: "name_in_use",
    17: "not_found",
    18: "map_changed",
    19: "corrupt",
    20: "verify_failed",
    21: "busy",
    22: "invalid_state",
    23: "io",
    24: "kernel_lacks",
    25: "unsupported_boot_loader",
    26: "signature_rejected",
    27: "policy_forbids",
}

COMMON_ARGS = dict(
    binary=dict(type="path", default="liverestore"),
    state_dir=dict(type="path"),
    metrics_file=dict(type="path"),
)


def argument_spec(**specific):
    """The options every module has, and the module's own."""
    spec = dict(COMMON_ARGS)
    spec.update(specific)
    return spec


class LiverestoreError(Exception):
    """liverestore ended with an error object (or without JSON at all)."""

    def __init__(self, msg, rc, kind, result=None, stderr=""):
        super(LiverestoreError, self).__init__(msg)
        self.msg = msg
        self.rc = rc
        self.kind = kind
        self.result = result or {}
        self.stderr = stderr


class LiverestoreCli:
    """The liverestore program on the managed host."""

    def __init__(self, module):
        self.module = module
        binary = module.params["binary"]
        if "/" not in binary:
            binary = module.get_bin_path(binary, required=True)
        self.binary = binary
        self.notes = []

    def command(self, args):
        cmd = [self.binary, "--json"]
        if self.module.params.get("state_dir"):
            cmd += ["--state-dir", self.module.params["state_dir"]]
        if self.module.params.get("metrics_file"):
            cmd += ["--metrics-file", self.module.params["metrics_file"]]
        return cmd + [str(a) for a in args]

    def run(self, args):
        """Run one command; its result object, or LiverestoreError."""
        cmd = self.command(args)
        rc, out, err = self.module.run_command(cmd, check_rc=False)
        last = None
        for line in out.splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "note":
                self.notes.append(event.get("message", ""))
            elif event.get("event") in ("result", "error"):
                last = event
        if last is None:
            msg = err.strip() or out.strip() or "liverestore printed nothing"
            raise LiverestoreError(
                msg, rc, EXIT_CODES.get(rc, "unknown"), stderr=err
            )
        if last.get("event") == "error":
            raise LiverestoreError(
                last.get("message", ""),
                last.get("exit_code", rc),
                last.get("kind", EXIT_CODES.get(rc, "unknown")),
                last,
                err,
            )
        if not last.get("ok", False):
            refusals = last.get("refusals") or []
            if refusals:
                msg = "; ".join(r.get("message", "") for r in refusals)
                kind = refusals[0].get("kind", EXIT_CODES.get(rc, "unknown"))
            else:
                msg = "liverestore %s did not pass (exit code %d)" % (
                    last.get("command", args[0]),
                    rc,
                )
                kind = EXIT_CODES.get(rc, "unknown")
            raise LiverestoreError(msg, rc, kind, last, err)
        return last

    def run_or_fail(self, args, **extra):
        """run(), and a failed task with msg, rc and error_kind on error."""
        try:
            return self.run(args)
        except LiverestoreError as e:
            self.fail(e, **extra)

    def fail(self, e, **extra):
        """A failed task: msg, rc (= exit_code) and error_kind from e,
        next to what the module reports anyway (extra)."""
        report = dict(extra)
        report.update(
            msg=e.msg,
            rc=e.rc,
            exit_code=e.rc,
            error_kind=e.kind,
            result=e.result,
            stderr=e.stderr,
            notes=self.notes,
        )
        self.module.fail_json(**report)

    def stagings(self):
        """Every staging's row of `list` ({name: row})."""
        listed = self.run_or_fail(["list"])
        return dict((i["name"], i) for i in listed.get("images", []))

    def info(self, name):
        """`info NAME`'s report, or None when there is no such staging."""
        try:
            return self.run(["info", name])
        except LiverestoreError as e:
            if e.kind == "not_found":
                return None
            self.fail(e)

    def status(self):
        return self.run_or_fail(["status"])


def option_args(params, flags=(), options=()):
    """Module parameters as liverestore arguments: `--flag` for each true
    flag, `--option VALUE` for each option that is set (a_b is --a-b)."""
    args = []
    for flag in flags:
        if params[flag]:
            args.append("--" + flag.replace("_", "-"))
    for opt in options:
        if params[opt] is not None:
            args += ["--" + opt.replace("_", "-"), str(params[opt])]
    return args


def members(stagings, name):
    """The stagings NAME stands for: itself, or NAME-p1, NAME-p2, ... of a
    whole-disk image staged under NAME."""
    if name in stagings:
        return [name]
    prefix = name + "-p"
    found = [n for n in stagings if n.startswith(prefix) and n[len(prefix):].isdigit()]
    return sorted(found, key=lambda n: int(n[len(prefix):]))


def progress_of(row):
    """A `list` row's progress as a ratio (1.0 when complete)."""
    if row.get("state") == "complete":
        return 1.0
    size = row.get("image_size") or 0
    if not size:
        return 0.0
    return round(float(row.get("written", 0)) / size, 4)


def boot_state(status):
    """What diff shows of the boot loader: before/after of activate,
    commit and rollback."""
    activation = status.get("activation") or {}
    return dict(
        activated=activation.get("name"),
        next_boot=status.get("next_boot"),
        boot_entry=boot_entry(activation),
        committed=status.get("committed", False),
        booted_restored=status.get("booted_restored", False),
        loader=status.get("loader"),
    )


def predicted_boot_change(module, cli, status, after, **extra):
    """Check mode of activate, commit and rollback: changed, and the diff
    of the boot state as the command would leave it (`after`: the fields
    it changes)."""
    before = boot_state(status)
    module.exit_json(
        changed=True,
        diff=dict(before=before, after=dict(before, **after)),
        notes=cli.notes,
        **extra
    )


def boot_change(module, cli, args, before_status, **extra):
    """Run a command that changes the boot loader (activate, commit,
    rollback) and exit with changed, diff (boot state before/after) and
    its report."""
    before = boot_state(before_status)
    done = cli.run_or_fail(args, **extra)
    after_status = cli.status()
    module.exit_json(
        changed=True,
        diff=dict(before=before, after=boot_state(after_status)),
        result=done,
        status=after_status,
        activation=after_status.get("activation"),
        next_boot=after_status.get("next_boot"),
        committed=after_status.get("committed", False),
        boot_entry=boot_entry(after_status.get("activation")),
        notes=cli.notes,
        **extra
    )


def boot_entry(activation):
    """An activation's boot entry: Boot#### (UEFI) or the GRUB entry."""
    if not activation:
        return None
    uefi = activation.get("uefi") or {}
    grub = activation.get("grub") or {}
    if uefi.get("boot_number") is not None:
        return "Boot%04X" % uefi["boot_number"]
    return grub.get("entry_id")
