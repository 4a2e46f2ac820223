//! The `liverestore` command: a thin layer over the library that parses
//! arguments, shows progress and results, and maps errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::json;

use liverestore::input::split::{self, Split};
use liverestore::progress::{JsonProgress, NoProgress, Progress, TerminalProgress, emit_json};
use liverestore::space::allocate::{Planned, SpaceRequest};
use liverestore::store::record::Segment;
use liverestore::store::state_dir::{DEFAULT_STATE_DIR, StateDir};
use liverestore::{
    Error, ErrorKind, attach, boot::activate, stage, stage::plan, stage::scan, stage::staged,
    stage::verify,
};

const EXIT_CODES: &str = "\
Exit codes:
   0  success
   1  unexpected internal error
   2  usage error
  10  not root
  11  unsupported filesystem (btrfs, tmpfs, overlay, network, …)
  12  unsupported device (LVM/LUKS/RAID, kernel refuses disk writes)
  13  not enough free space
  14  bad image (missing, unreadable, truncated, longer than announced)
  15  invalid name
  16  name already in use
  17  no such staged image
  18  map changed since staging (file replaced, moved, unpinned)
  19  corrupt state file or on-disk header
  20  verification failed (data on disk differs from the recorded hashes)
  21  busy: another liverestore holds the lock
  22  invalid state for this operation (e.g. resuming a complete image)
  23  I/O error
  24  the kernel lacks what is needed (device-mapper, loop, FUSE)
  25  no boot loader to drive (no writable efivarfs, no usable GRUB)";

/// Restore a disk or partition image onto the disk the running Linux
/// system lives on, while it keeps running.
///
/// The image is written into the pinned extents of an ordinary file (the
/// container) of a mounted ext4, xfs or vfat filesystem, straight through the
/// whole-disk device. The host filesystem never sees the data and stays
/// intact; every write is checked against the container's map.
///
/// Typical use:
///   liverestore plan root.img --dir /var/tmp        # what would happen
///   liverestore stage root.img --name web --dir /var/tmp
///   liverestore verify web                           # re-read and compare
///   liverestore map web --json                       # where it is on disk
///   liverestore discard web                          # unpin, delete, forget
#[derive(Parser, Debug)]
#[command(name = "liverestore", version, verbatim_doc_comment, after_help = EXIT_CODES)]
struct Cli {
    /// Where records of staged images are kept.
    #[arg(long, global = true, env = "LIVERESTORE_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    /// Machine-readable output: JSON lines on stdout (progress events, then
    /// a result or error object).
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

/// Where the staged image's space comes from.
#[derive(clap::Args, Debug, Clone)]
struct SpaceArgs {
    /// Directory on a mounted ext4, xfs or vfat filesystem of the target
    /// disk. Repeat it to join several filesystems of the same disk into one
    /// segment set; they are filled in the order given, and the first holds
    /// the on-disk header.
    #[arg(long, value_name = "DIR")]
    dir: Vec<PathBuf>,
    /// Also use the disk's free space outside every partition (after the
    /// directories). Nothing protects that space from a partitioning tool:
    /// `list` shows the staging invalid if a partition is created over it.
    #[arg(long)]
    unallocated: bool,
    /// Leave at least SIZE free on every filesystem (bytes, or with a K, M,
    /// G or T suffix, powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = parse_size, default_value = "0")]
    keep_free: u64,
    /// Split containers into files of at most SIZE. By default the largest
    /// file each filesystem allows is probed (vfat: 4 GiB - 1 byte).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_file_size: Option<u64>,
    /// When the image does not fit, delete files listed in FILE (absolute
    /// glob patterns, one a line, least critical first; `#` comments)
    /// until it does, and no more. Only single-link regular files on the
    /// --dir filesystems; never a container or the state directory.
    /// `plan` shows what would be deleted.
    #[arg(long, value_name = "FILE")]
    make_room: Option<PathBuf>,
    /// Put each image whole in one unallocated range (starting on a 1 MiB
    /// boundary), with only the on-disk header in the first --dir: then
    /// `activate` boots it natively, from a partition entry added over
    /// exactly those bytes, with no device-mapper at boot.
    #[arg(long, requires = "unallocated")]
    contiguous: bool,
}

impl SpaceArgs {
    fn request(&self) -> SpaceRequest {
        SpaceRequest {
            dirs: self.dir.clone(),
            unallocated: self.unallocated,
            keep_free: self.keep_free,
            max_file_size: self.max_file_size,
            make_room: self.make_room.clone(),
            contiguous: self.contiguous,
        }
    }
}

/// A size in bytes, with an optional K, M, G or T suffix (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix '{c}' (use K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 4096, 64M, 2G)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// How to read the image.
#[derive(clap::Args, Debug, Clone)]
struct ImageArgs {
    /// Image size in bytes: needed for stdin or a compressed stream that
    /// does not declare its size; checked against the image otherwise.
    #[arg(long)]
    size: Option<u64>,
    /// bmap file for a raw image (default: IMAGE.bmap next to a local image).
    #[arg(long, value_name = "FILE")]
    bmap: Option<PathBuf>,
    /// Ignore an IMAGE.bmap next to the image.
    #[arg(long, conflicts_with = "bmap")]
    no_bmap: bool,
    /// For a whole-disk image (GPT or MBR): stage only partition N, as NAME.
    /// By default every partition is staged into its own container,
    /// NAME-p1, NAME-p2, … (numbered as in the image), and the image's
    /// partition table is recorded with each.
    #[arg(long, value_name = "N")]
    partition: Option<u32>,
    /// Stage a whole-disk image as one image, partition table and all.
    #[arg(long, conflicts_with = "partition")]
    whole_disk: bool,
}

impl ImageArgs {
    fn options(&self) -> liverestore::input::OpenOptions {
        liverestore::input::OpenOptions {
            size: self.size,
            bmap: self.bmap.clone(),
            no_bmap: self.no_bmap,
            start_at: 0,
        }
    }

    fn split(&self) -> Split {
        match (self.partition, self.whole_disk) {
            (Some(n), _) => Split::Partition(n),
            (None, true) => Split::WholeDisk,
            (None, false) => Split::Partitions,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Preflight: show what staging IMAGE into DIR would do and what would
    /// refuse it, writing nothing. Exits non-zero if staging would be refused.
    Plan {
        /// Image file, block device, http(s) URL, or `-` for stdin.
        image: String,
        #[command(flatten)]
        space: SpaceArgs,
        #[command(flatten)]
        input: ImageArgs,
        /// Also check that this name is free.
        #[arg(long)]
        name: Option<String>,
    },
    /// Stage IMAGE into a pinned container in DIR and write it to the disk.
    ///
    /// IMAGE is a file, a block device, an http(s):// URL (streamed, never
    /// stored; a dropped connection is resumed with a range request) or `-`
    /// for stdin. Recognized by content, not by name:
    ///   compression: gzip, xz (multithreaded), zstd
    ///   layout:      raw, qcow2, VHD (fixed, dynamic), VHDX, Android sparse,
    ///                raw + bmap (IMAGE.bmap, or --bmap FILE)
    /// Runs of zeros are zeroed on the disk (BLKZEROOUT) instead of written.
    /// A SHA-256 from --sha256 or from IMAGE.sha256 / IMAGE.sha256sum must
    /// match before the staging counts as complete; otherwise it is marked
    /// failed.
    ///
    /// A whole-disk image (GPT or MBR) becomes one staging per partition,
    /// NAME-p1, NAME-p2, … numbered as in the image, written in one pass;
    /// each records the image's partition table (types, GUIDs, labels,
    /// attributes) for activation. --partition N stages only partition N;
    /// --whole-disk stages the image as it is.
    ///
    /// Space: the container is DIR/NAME.liverestore. Several --dir (other
    /// filesystems of the same disk) and --unallocated (the disk's space
    /// outside every partition) make a segment set, filled in that order;
    /// files never exceed what the filesystem allows (probed; on vfat
    /// 4 GiB less one byte), so a large image on vfat becomes
    /// NAME.liverestore, NAME+2.liverestore, …
    ///   liverestore stage root.img --name web --dir / --dir /data --unallocated
    ///
    /// With --resume NAME, continue a staging interrupted by a crash or
    /// power loss: IMAGE defaults to the recorded path (`-` to pipe it again).
    /// For a split image, NAME (or any NAME-pN) resumes all its partitions.
    #[command(verbatim_doc_comment)]
    Stage {
        /// Image file, block device, http(s) URL, or `-` for stdin.
        image: Option<String>,
        /// Name of the staged image (letters, digits, '.', '-', '_').
        #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
        name: Option<String>,
        #[command(flatten)]
        space: SpaceArgs,
        #[command(flatten)]
        input: ImageArgs,
        /// The image's SHA-256 (64 hex digits): checked before completing.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        /// Continue the interrupted staging NAME.
        #[arg(long, value_name = "NAME")]
        resume: Option<String>,
    },
    /// List staged images, their state, and whether their map is still valid.
    List,
    /// Show everything recorded about a staged image.
    Info { name: String },
    /// Re-derive the map, check the on-disk header, and re-read the image
    /// from the raw disk, comparing it with the hashes recorded while staging.
    Verify { name: String },
    /// Print where the image lies on the disk (byte units).
    Map { name: String },
    /// Wipe the on-disk header, unpin and delete the container, forget it.
    /// The name a whole-disk image was staged under discards all of its
    /// partitions (NAME-p1, NAME-p2, …).
    Discard {
        name: String,
        /// Also discard when the state file is damaged.
        #[arg(long)]
        force: bool,
    },
    /// Scan a disk (or disk image file) for liverestore headers, without
    /// the state directory.
    Scan { disk: PathBuf },
    /// Make the next boot (once) start the staged image NAME.
    ///
    /// Re-validates the map and re-reads every staged byte, finds the
    /// image's /boot/vmlinuz-VERSION and /boot/initrd.img-VERSION, copies
    /// them where the boot loader reads files (the initrd with the
    /// early-boot initramfs appended, see `liverestore initrd`) and arms a
    /// one-shot boot of them:
    ///
    ///   UEFI  files in ESP/liverestore/NAME/, a Boot#### load option for
    ///         the kernel's EFI stub, BootNext set to it.
    ///   GRUB  files in /boot/liverestore/NAME/, a menu entry in
    ///         GRUB_DIR/custom.cfg, next_entry set in GRUB_DIR/grubenv
    ///         (BIOS or UEFI; grub.cfg as update-grub makes it).
    ///
    /// --loader auto (the default) uses UEFI when efivarfs is mounted and
    /// writable and falls back to GRUB otherwise, saying so.
    ///
    /// The restored system's root:
    ///
    ///   native  an image staged with --unallocated --contiguous is one run
    ///           of the disk outside every partition: a GPT entry is added
    ///           over exactly it (a free slot: other partitions keep their
    ///           numbers; the kernel is told with BLKPG) and the restored
    ///           kernel and initrd boot it as they are, root=PARTUUID=….
    ///   mapped  anything else: the early-boot step assembles the image
    ///           from its map with device-mapper (root=/dev/dm-0).
    ///
    /// --boot auto (the default) is native when it can be.
    ///
    /// A whole-disk image (staged as NAME-p1, NAME-p2, …) boots all its
    /// partitions together: the one with a kernel is the root, the others
    /// (its ESP, /home) come along — mapped as liverestore-pN, or each
    /// with its own partition entry when native.
    ///
    /// Nothing else changes: if the restored system does not come up and
    /// `commit`, the boot after that is the old system again. Only one
    /// image can be activated at a time; `liverestore rollback` takes it
    /// back, and `discard` refuses it until then.
    #[command(verbatim_doc_comment)]
    Activate {
        /// A staged image, or the name a whole-disk image was staged under
        /// (any of its NAME-pN works too).
        name: String,
        /// Which boot loader to arm.
        #[arg(long, value_enum, default_value_t = LoaderArg::Auto)]
        loader: LoaderArg,
        /// How the restored system finds its root.
        #[arg(long, value_enum, default_value_t = BootArg::Auto)]
        boot: BootArg,
        /// The mounted EFI system partition (UEFI).
        #[arg(long, value_name = "DIR", default_value = "/boot/efi")]
        esp: PathBuf,
        /// GRUB's directory, with grub.cfg and grubenv (GRUB).
        #[arg(long, value_name = "DIR", default_value = "/boot/grub")]
        grub_dir: PathBuf,
        /// UEFI, a whole-disk image activated natively: boot it from its
        /// own ESP, starting PROGRAM there (default \EFI\BOOT\BOOTX64.EFI,
        /// the removable-media path) as its own disk would; nothing is
        /// copied to either ESP, and the program gets only --append.
        #[arg(
            long,
            value_name = "PROGRAM",
            num_args = 0..=1,
            default_missing_value = "\\EFI\\BOOT\\BOOTX64.EFI"
        )]
        image_esp: Option<String>,
        /// Extra kernel arguments for the restored system.
        #[arg(long, value_name = "ARGS")]
        append: Option<String>,
        /// The static liverestore for the early-boot step (default: this
        /// program, if it is statically linked).
        #[arg(long, value_name = "FILE")]
        helper: Option<PathBuf>,
        /// Boot the image once (the default; the restored system makes
        /// itself the default with `liverestore commit`).
        #[arg(long, default_value_t = true)]
        trial: bool,
    },
    /// Which system is running, what is activated, what the next boot starts.
    Status,
    /// Undo an activation, from either system. From the old system:
    /// the one-shot choice (BootNext / next_entry), the default (BootOrder
    /// entry / liverestore_default), the boot entry (Boot#### / the
    /// custom.cfg block) and the kernel and initrd files. From the
    /// restored system: the boot loader's choice of it (the files stay
    /// until `rollback` runs in the old system). The next boot starts the
    /// old system.
    Rollback,
    /// Run in the restored system after a trial boot: make it the default
    /// (UEFI: its Boot#### goes first in BootOrder; GRUB: liverestore_default
    /// is set in grubenv, which its custom.cfg block turns into the default).
    Commit,
    /// Write the early-boot initramfs that boots the staged image NAME.
    ///
    /// Append it to the restored system's own initrd and boot its kernel
    /// with `rdinit=/lr/init root=/dev/dm-0`: `/lr/init` (a static
    /// liverestore) loads the disk's driver and dm-mod from that initrd's
    /// modules, finds the disk by the staging's on-disk header, maps the
    /// image with device-mapper (`/dev/dm-0`, named liverestore-root) and
    /// starts the initrd's `/init`. On any failure it reboots after 10 s.
    ///   liverestore initrd web --append-to /boot/initrd.img-6.1.0 --output /boot/initrd-web.img
    ///   liverestore initrd web --output /boot/lr-web.cpio   # the archive alone
    /// Appending by hand: the archive must start at a multiple of 4 bytes
    /// (pad the initrd with zeros first), or the kernel rejects it.
    #[command(verbatim_doc_comment)]
    Initrd {
        name: String,
        /// Where to write the archive (or, with --append-to, the whole initrd).
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        /// The restored system's own initrd: write it with the archive
        /// appended, padded to the 4-byte boundary the kernel needs.
        #[arg(long, value_name = "INITRD")]
        append_to: Option<PathBuf>,
        /// The static liverestore to put in it (default: this program,
        /// if it is statically linked).
        #[arg(long, value_name = "FILE")]
        helper: Option<PathBuf>,
    },
    /// Show a complete staged image as a block device (prints its path),
    /// without rebooting: a device-mapper table built from the map, over a
    /// loop device on the whole disk. Read-only unless --rw.
    ///
    ///   liverestore attach web            # read-only: fsck -n, mount -o ro
    ///   liverestore attach web --rw       # writable, changes thrown away on detach
    ///   liverestore attach web --rw=direct  # writable, changes the staged image
    #[command(verbatim_doc_comment)]
    Attach {
        name: String,
        /// Writable: `overlay` (default) keeps writes in a throw-away
        /// copy-on-write store; `direct` writes into the staged image.
        #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "overlay", require_equals = true)]
        rw: Option<RwMode>,
    },
    /// Take down an attachment (device-mapper devices, loop devices, the
    /// overlay store); also cleans up after an interrupted attach.
    Detach { name: String },
    /// Test a staged filesystem image for real, then throw the test away:
    /// attach it through an overlay, fsck it read-only, mount it, run CMD
    /// with the mount point in $LIVERESTORE_ROOT (and as working
    /// directory), report pass/fail, always detach. The staged image is
    /// never changed.
    ///
    ///   liverestore test-restore web --run 'test -s "$LIVERESTORE_ROOT/etc/hostname"'
    #[command(verbatim_doc_comment)]
    TestRestore {
        name: String,
        /// Shell command to run against the mounted image.
        #[arg(long, value_name = "CMD")]
        run: Option<String>,
    },
    /// Change a staged system before its first boot, so it comes up as
    /// this machine (or as a new one). The staged bytes are verified
    /// first; the image is attached writable, its root filesystem mounted
    /// and changed, and every chunk hashed anew, so `verify` and
    /// `activate` accept the result. Applied in this order:
    /// --new-identity, --hostname, --carry-network, --inject-drivers,
    /// --preserve (what you name explicitly wins). Interrupted, the
    /// staging stays marked as being customized (verify and activate
    /// refuse it): run the same command again to finish.
    ///
    ///   liverestore customize web --carry-network --preserve /etc/ssh --preserve /home
    ///   liverestore customize lab-07 --new-identity --hostname lab-07
    #[command(verbatim_doc_comment)]
    Customize {
        name: String,
        /// Copy this file or tree from the running system into the
        /// restored one at the same path (mode, owner, time and links
        /// kept; files the restored system has and this one lacks stay).
        /// Repeat for more.
        #[arg(long, value_name = "PATH")]
        preserve: Vec<PathBuf>,
        /// Copy this system's network configuration (netplan,
        /// NetworkManager, systemd-networkd or ifupdown: the stacks both
        /// systems use) and a plain /etc/resolv.conf, so a remote machine
        /// comes back online.
        #[arg(long)]
        carry_network: bool,
        /// A machine of its own: empty /etc/machine-id (systemd makes a new
        /// one at first boot), new SSH host keys of the same types.
        #[arg(long)]
        new_identity: bool,
        /// Set /etc/hostname and the 127.0.1.1 line of /etc/hosts.
        #[arg(long, value_name = "NAME")]
        hostname: Option<String>,
        /// Copy firmware that this machine's loaded modules use and the
        /// image lacks; and, when the image's kernel is this kernel's
        /// version, the loaded modules it lacks (then depmod).
        #[arg(long)]
        inject_drivers: bool,
        /// Take preserved files, network configuration and drivers from
        /// the system whose root is mounted at DIR, not the running one.
        #[arg(long, value_name = "DIR", default_value = "/")]
        source_root: PathBuf,
    },
    /// (internal) Serve a staged image as a FUSE file for `attach` on a
    /// kernel without device-mapper; exits when unmounted.
    #[command(hide = true)]
    ServeImage {
        name: String,
        mountpoint: PathBuf,
        /// Take writes (through the map) too.
        #[arg(long)]
        writable: bool,
    },
}

/// `activate --boot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum BootArg {
    /// Native when the image is one contiguous range outside every
    /// partition of a GPT disk, mapped otherwise.
    Auto,
    Native,
    Mapped,
}

/// `activate --loader`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LoaderArg {
    /// UEFI when efivarfs is mounted and writable, GRUB otherwise.
    Auto,
    Uefi,
    Grub,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RwMode {
    Overlay,
    Direct,
}

fn progress_for(json: bool) -> Box<dyn Progress> {
    if json {
        Box::new(JsonProgress::default())
    } else if rustix::termios::isatty(std::io::stderr()) {
        Box::new(TerminalProgress::default())
    } else {
        Box::new(NoProgress)
    }
}

/// "partition 2 ("data") of the 64.0 MiB GPT disk image staged as 'sys'".
fn describe_partition(p: &liverestore::store::record::StagedPartition) -> String {
    let label = p
        .entry()
        .and_then(|e| e.label.as_deref())
        .filter(|l| !l.is_empty())
        .map(|l| format!(" (\"{l}\")"))
        .unwrap_or_default();
    let kind = match p.table.kind {
        liverestore::input::partitions::TableKind::Gpt => "GPT",
        liverestore::input::partitions::TableKind::Mbr => "MBR",
    };
    format!(
        "partition {}{label} of the {} {kind} disk image staged as '{}'",
        p.number,
        human_bytes(p.image_size),
        p.set
    )
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Print one JSON object on one line (every JSON output is JSON lines).
fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(v).expect("serializable"));
}

/// Outcome of a command: exit code (0 unless a check failed without error).
type Outcome = Result<u8, Error>;

fn run(cli: Cli) -> Outcome {
    let state = StateDir::new(&cli.state_dir);
    let progress = progress_for(cli.json);
    match cli.command {
        Command::Plan {
            image,
            space,
            input,
            name,
        } => {
            if space.dir.is_empty() {
                return Err(Error::new(ErrorKind::NoSpace, "give at least one --dir"));
            }
            let pieces = liverestore::input::Image::open(&image, &input.options())
                .and_then(|mut i| split::pieces(&mut i, name.as_deref(), input.split()));
            let a = plan::assess(&state, &space.request(), pieces);
            let p = &a.plan;
            if cli.json {
                print_json(p);
            } else {
                let show = |k: &str, v: Option<String>| {
                    println!("{k:>20}: {}", v.unwrap_or_else(|| "-".into()))
                };
                show("directory", Some(p.dir.clone()));
                show("filesystem", p.fs_type.clone());
                show("mounted at", p.mount_point.clone());
                show("device", p.device.clone());
                show("disk", p.disk.clone());
                show("partition start", p.partition_start.map(|v| v.to_string()));
                show("sector size", p.logical_sector_size.map(|v| v.to_string()));
                show("image size", p.image_size.map(human_bytes));
                show("container size", p.container_size.map(human_bytes));
                show("free space", p.free_bytes.map(human_bytes));
                if p.sources.len() > 1 || p.stagings.iter().any(|s| s.space.len() > 1) {
                    for (i, src) in p.sources.iter().enumerate() {
                        let limit = src
                            .max_file_size
                            .map(|m| format!(", files up to {}", human_bytes(m)))
                            .unwrap_or_default();
                        show(
                            &format!("source {}", i + 1),
                            Some(format!(
                                "{} {} ({}{limit})",
                                src.kind,
                                src.location,
                                human_bytes(src.available)
                            )),
                        );
                    }
                    for st in &p.stagings {
                        let pieces: Vec<String> = st
                            .space
                            .iter()
                            .map(|piece| match piece {
                                Planned::File { source, size } => {
                                    format!("{} in source {}", human_bytes(*size), source + 1)
                                }
                                Planned::Unallocated { disk, length } => {
                                    format!("{} unallocated at {disk}", human_bytes(*length))
                                }
                            })
                            .collect();
                        show(
                            &format!("space of {}", st.name.as_deref().unwrap_or("the image")),
                            Some(pieces.join(" + ")),
                        );
                    }
                }
                if p.stagings.iter().any(|s| s.partition.is_some()) {
                    for st in &p.stagings {
                        show(
                            &format!("partition {}", st.partition.unwrap_or(0)),
                            Some(format!(
                                "{} at {} → {}",
                                human_bytes(st.image_size),
                                st.image_offset,
                                st.name.as_deref().unwrap_or("(no --name)")
                            )),
                        );
                    }
                }
                if !p.make_room.is_empty() {
                    let total: u64 = p.make_room.iter().map(|c| c.bytes).sum();
                    show(
                        "make room",
                        Some(format!(
                            "delete {} files ({})",
                            p.make_room.len(),
                            human_bytes(total)
                        )),
                    );
                    for c in &p.make_room {
                        println!(
                            "{:>20}  {} ({})",
                            "",
                            c.path.display(),
                            human_bytes(c.bytes)
                        );
                    }
                }
                if p.ok {
                    println!("OK: staging would proceed");
                } else {
                    for r in &p.refusals {
                        println!("REFUSED ({}): {}", r.kind, r.message);
                    }
                }
            }
            Ok(p.refusals.first().map_or(0, |r| r.exit_code as u8))
        }
        Command::Stage {
            image,
            name,
            space,
            input,
            sha256,
            resume,
        } => {
            let recs = match (resume, name) {
                (Some(_), _) if !space.dir.is_empty() || space.unallocated => {
                    return Err(Error::new(
                        ErrorKind::InvalidState,
                        "--resume continues in the space recorded for the staging; drop --dir and --unallocated",
                    ));
                }
                (Some(resume), _) => {
                    stage::resume(&state, &resume, image.as_deref(), progress.as_ref())?
                }
                (None, Some(name)) => {
                    if space.dir.is_empty() {
                        return Err(Error::new(
                            ErrorKind::NoSpace,
                            "give at least one --dir (the first holds the staging's header)",
                        ));
                    }
                    let image = image.ok_or_else(|| {
                        Error::new(ErrorKind::BadImage, "no IMAGE given (use `-` for stdin)")
                    })?;
                    let space = space.request();
                    let req = stage::StageRequest {
                        name: &name,
                        space: &space,
                        image: &image,
                        open: input.options(),
                        sha256,
                        split: input.split(),
                    };
                    stage::stage(&state, &req, progress.as_ref())?
                }
                _ => unreachable!("clap requires --name without --resume"),
            };
            if cli.json {
                let stagings = recs
                    .iter()
                    .map(staging_json)
                    .collect::<Result<Vec<_>, Error>>()?;
                emit_json(&json!({ "event": "result", "ok": true, "stagings": stagings }));
            } else {
                for rec in &recs {
                    let part = rec
                        .image
                        .partition
                        .as_ref()
                        .map(|p| format!(", {}", describe_partition(p)))
                        .unwrap_or_default();
                    let sha = rec
                        .image
                        .partition
                        .as_ref()
                        .map_or(&rec.image.sha256, |p| &p.image_sha256);
                    println!(
                        "staged '{}' ({}{part}): {} onto {} in {} extents ({} written, {} zeroed); image sha256 {}",
                        rec.name,
                        rec.image.kind,
                        human_bytes(rec.image.size),
                        rec.disk.path,
                        rec.image_map()?.extents().len(),
                        human_bytes(rec.image.disk_written),
                        human_bytes(rec.image.disk_zeroed),
                        sha.as_deref().unwrap_or("not computed (no --sha256)")
                    );
                }
            }
            Ok(0)
        }
        Command::List => {
            let items = staged::list(&state)?;
            if cli.json {
                print_json(&json!({ "images": items }));
            } else if items.is_empty() {
                println!(
                    "no staged images (state directory {})",
                    state.root().display()
                );
            } else {
                println!(
                    "{:<20} {:<10} {:>10} {:>6} {:<6} CONTAINER",
                    "NAME", "STATE", "SIZE", "DONE", "MAP"
                );
                for i in items {
                    let pct = match (i.written, i.image_size) {
                        (Some(w), Some(s)) if s > 0 => format!("{}%", w * 100 / s),
                        _ => "-".into(),
                    };
                    println!(
                        "{:<20} {:<10} {:>10} {:>6} {:<6} {}",
                        i.name,
                        i.state.as_deref().unwrap_or("corrupt"),
                        i.image_size.map(human_bytes).unwrap_or_else(|| "-".into()),
                        pct,
                        if i.map_valid { "valid" } else { "BAD" },
                        i.container.as_deref().unwrap_or("-")
                    );
                    if let Some(p) = i.problem {
                        println!("    {p}");
                    }
                }
            }
            Ok(0)
        }
        Command::Info { name } => {
            let rec = state.load(&name)?;
            let check = staged::revalidate(&rec);
            if cli.json {
                print_json(&json!({
                    "record": rec, "map_valid": check.is_ok(),
                    "problem": check.as_ref().err().map(|e| e.to_string()),
                }));
            } else {
                println!("name:        {}", rec.name);
                println!("id:          {}", rec.id);
                println!("state:       {}", rec.state.as_str());
                println!(
                    "image:       {} ({}, {})",
                    rec.image.source.as_deref().unwrap_or("stdin"),
                    rec.image.kind,
                    human_bytes(rec.image.size)
                );
                if let Some(f) = &rec.image.failure {
                    println!("failure:     {f}");
                }
                if let Some(p) = &rec.image.partition {
                    println!("partition:   {}", describe_partition(p));
                    if let Some(e) = p.entry() {
                        println!(
                            "             LBA {}..{} ({}-byte sectors){}{}",
                            e.first_lba,
                            e.last_lba,
                            p.table.sector_size,
                            e.type_guid
                                .as_ref()
                                .map(|t| format!(", type {t}"))
                                .or(e.mbr_type.map(|t| format!(", type 0x{t:02x}")))
                                .unwrap_or_default(),
                            if e.bootable { ", bootable" } else { "" }
                        );
                    }
                    println!("image sha256: {}", p.image_sha256.as_deref().unwrap_or("-"));
                }
                println!(
                    "written:     {} of {} bytes",
                    rec.image.written, rec.image.size
                );
                println!(
                    "sha256:      {}",
                    rec.image.sha256.as_deref().unwrap_or("-")
                );
                println!(
                    "container:   {} (inode {}, {} bytes, image at +{})",
                    rec.container.path,
                    rec.container.inode,
                    rec.container.size,
                    rec.container.data_offset
                );
                println!(
                    "filesystem:  {} {} on {} (uuid {})",
                    rec.host.fs_type,
                    rec.host.mount_point,
                    rec.host.device,
                    rec.host.fs_uuid.as_deref().unwrap_or("-")
                );
                for (i, segment) in rec.segments.iter().enumerate() {
                    let what = match segment {
                        Segment::File { container, host } => format!(
                            "{} ({}, {} {})",
                            container.path,
                            human_bytes(container.size),
                            host.fs_type,
                            host.mount_point
                        ),
                        Segment::Unallocated { disk, length } => format!(
                            "unallocated disk bytes {disk}..{} ({})",
                            disk + length,
                            human_bytes(*length)
                        ),
                    };
                    println!("segment {:<4} {what}", i + 2);
                }
                println!(
                    "disk:        {} ({}, {}-byte sectors)",
                    rec.disk.path,
                    human_bytes(rec.disk.size),
                    rec.disk.logical_sector_size
                );
                println!(
                    "extents:     {}",
                    rec.map.as_ref().map_or(0, |m| m.extents().len())
                );
                match check {
                    Ok(_) => println!("map:         valid"),
                    Err(e) => println!("map:         NOT VALID: {e}"),
                }
            }
            Ok(0)
        }
        Command::Verify { name } => {
            let report = verify::verify(&state, &name, progress.as_ref())?;
            if cli.json {
                let mut v = serde_json::to_value(&report).expect("serializable");
                v["event"] = json!("result");
                emit_json(&v);
            } else if report.ok {
                println!(
                    "'{name}' verified: {} in {} chunks match; sha256 {}",
                    human_bytes(report.bytes_checked),
                    report.chunks_checked,
                    report.sha256.as_deref().unwrap_or("-")
                );
            } else {
                println!(
                    "'{name}' FAILED verification: {} of {} chunks differ (first: {:?})",
                    report.bad_chunk_count, report.chunks_checked, report.bad_chunks
                );
            }
            Ok(if report.ok {
                0
            } else {
                ErrorKind::VerifyFailed.exit_code() as u8
            })
        }
        Command::Map { name } => {
            let rec = state.load(&name)?;
            let export = staged::export_map(&rec)?;
            if cli.json {
                println!("{}", serde_json::to_string(&export).expect("serializable"));
            } else {
                println!(
                    "{} on {} ({} bytes, {}-byte sectors)",
                    export.name, export.disk, export.image_size, export.logical_sector_size
                );
                println!(
                    "{:>16} {:>16} {:>16}",
                    "IMAGE_OFFSET", "DISK_OFFSET", "LENGTH"
                );
                for e in export.extents {
                    println!(
                        "{:>16} {:>16} {:>16}",
                        e.image_offset, e.disk_offset, e.length
                    );
                }
            }
            Ok(0)
        }
        Command::Discard { name, force } => {
            let done = staged::discard_named(&state, &name, force)?;
            if !cli.json {
                for d in &done {
                    println!(
                        "discarded '{}'{}",
                        d.name,
                        d.container
                            .as_ref()
                            .map(|c| format!(" ({c} removed)"))
                            .unwrap_or_default()
                    );
                }
            }
            if cli.json {
                emit_json(&json!({ "event": "result", "ok": true, "discarded": done }));
            }
            Ok(0)
        }
        Command::Attach { name, rw } => {
            let mode = match rw {
                None => attach::AttachMode::ReadOnly,
                Some(RwMode::Overlay) => attach::AttachMode::Overlay,
                Some(RwMode::Direct) => attach::AttachMode::Direct,
            };
            let a = attach::attach(&state, &name, mode)?;
            if cli.json {
                emit_json(&json!({ "event": "result", "ok": true, "attachment": a }));
            } else {
                println!("{}", a.device);
                if a.backend == "fuse" {
                    eprintln!(
                        "no device-mapper in this kernel: '{}' is served {} through FUSE ({}) and a loop device",
                        a.name,
                        if a.mode == attach::AttachMode::Direct {
                            "writable"
                        } else {
                            "read-only"
                        },
                        a.fuse_mount.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(0)
        }
        Command::Detach { name } => {
            let a = attach::detach(&state, &name)?;
            if cli.json {
                emit_json(&json!({ "event": "result", "ok": true, "detached": a }));
            } else {
                println!("detached '{}'", a.name);
            }
            Ok(0)
        }
        Command::TestRestore { name, run } => {
            let r = liverestore::attach::test_restore::test_restore(&state, &name, run.as_deref())?;
            if cli.json {
                emit_json(&json!({ "event": "result", "ok": r.passed, "report": r }));
            } else {
                let yes = |b: bool| if b { "ok" } else { "FAILED" };
                println!(
                    "filesystem: {}",
                    r.filesystem.as_deref().unwrap_or("unknown")
                );
                println!(
                    "fsck:       {} ({})",
                    yes(r.fsck_clean),
                    r.fsck_command.as_deref().unwrap_or("-")
                );
                println!(
                    "mount:      {}{}",
                    r.mount_error
                        .clone()
                        .unwrap_or_else(|| yes(r.mounted).into()),
                    if r.read_only {
                        " (read-only: no device-mapper here for a writable overlay)"
                    } else {
                        ""
                    }
                );
                if let (Some(c), Some(st)) = (&r.command, r.command_status) {
                    println!("command:    {} (exit {st}): {c}", yes(st == 0));
                }
                println!(
                    "{}: test-restore of '{}'",
                    if r.passed { "PASSED" } else { "FAILED" },
                    r.name
                );
            }
            Ok(if r.passed { 0 } else { 20 })
        }
        Command::Customize {
            name,
            preserve,
            carry_network,
            new_identity,
            hostname,
            inject_drivers,
            source_root,
        } => {
            let opts = liverestore::customize::CustomizeOptions {
                preserve,
                source_root,
                carry_network,
                new_identity,
                hostname,
                inject_drivers,
            };
            let r = liverestore::customize::customize(&state, &name, &opts, progress.as_ref())?;
            if cli.json {
                emit_json(&json!({ "event": "result", "ok": true, "customized": r }));
            } else {
                for c in &r.changes {
                    println!("{:<13} {}  ({})", c.what, c.path, c.detail);
                }
                println!(
                    "'{}' customized{}: {} changes in its {} filesystem; new sha256 {}",
                    r.name,
                    if r.resumed {
                        " (an interrupted run finished)"
                    } else {
                        ""
                    },
                    r.changes.len(),
                    r.filesystem,
                    r.sha256
                );
            }
            Ok(0)
        }
        Command::ServeImage {
            name,
            mountpoint,
            writable,
        } => {
            liverestore::attach::fuse_image::serve(&state, &name, &mountpoint, writable)?;
            Ok(0)
        }
        Command::Activate {
            name,
            loader,
            boot,
            esp,
            grub_dir,
            image_esp,
            append,
            helper,
            trial: _,
        } => {
            let opts = activate::ActivateOptions {
                loader: match loader {
                    LoaderArg::Auto => activate::LoaderChoice::Auto,
                    LoaderArg::Uefi => activate::LoaderChoice::Uefi,
                    LoaderArg::Grub => activate::LoaderChoice::Grub,
                },
                boot: match boot {
                    BootArg::Auto => activate::BootChoice::Auto,
                    BootArg::Native => activate::BootChoice::Native,
                    BootArg::Mapped => activate::BootChoice::Mapped,
                },
                esp: &esp,
                grub_dir: &grub_dir,
                image_esp: image_esp.as_deref(),
                append: append.as_deref(),
                helper: helper.as_deref(),
            };
            let a = activate::activate(&state, &name, &opts, progress.as_ref())?;
            if cli.json {
                emit_json(&json!({ "event": "result", "ok": true, "activation": a }));
            } else {
                let how = match (&a.uefi, &a.grub) {
                    (Some(u), _) => {
                        format!("Boot{:04X} ({}), BootNext set", u.boot_number, u.loader)
                    }
                    (_, Some(g)) => format!(
                        "GRUB entry '{}' in {}/custom.cfg, next_entry set",
                        g.entry_id, g.grub_dir
                    ),
                    _ => String::new(),
                };
                if let Some(why) = &a.fallback {
                    eprintln!("{why}");
                }
                println!(
                    "'{}' activated for the next boot only: {how}; kernel {} in {}",
                    a.name, a.kernel_version, a.files_dir
                );
                for (i, n) in a.native.iter().enumerate() {
                    println!(
                        "native boot: partition {} of {} over '{}' ({}), PARTUUID={}{}",
                        n.partition.number,
                        n.disk,
                        n.staging,
                        human_bytes(n.partition.length),
                        n.partition.guid,
                        if i == 0 { " (the root)" } else { "" }
                    );
                }
                if a.native.is_empty() {
                    println!("mapped boot: device-mapper at boot, root=/dev/dm-0");
                    if !a.companions.is_empty() {
                        println!(
                            "with the image's other partitions, mapped alongside as liverestore-pN: {}",
                            a.companions.join(", ")
                        );
                    }
                }
            }
            Ok(0)
        }
        Command::Status => {
            let s = activate::status(&state)?;
            if cli.json {
                print_json(&s);
            } else {
                println!(
                    "running:    {}",
                    if s.booted_restored {
                        "a restored image (booted through liverestore)"
                    } else {
                        "the installed system"
                    }
                );
                match &s.activation {
                    Some(a) => println!(
                        "activated:  '{}' as {} (kernel {})",
                        a.name,
                        a.entry(),
                        a.kernel_version
                    ),
                    None => println!("activated:  nothing"),
                }
                println!("next boot:  {}", s.next_boot);
                if let Some(o) = &s.old_system {
                    println!(
                        "old system: {} (root {}, kernel {}{})",
                        o.hostname,
                        o.root_device,
                        o.kernel_release,
                        o.boot_entry
                            .as_deref()
                            .map(|e| format!(", started from {e}"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(0)
        }
        Command::Rollback => {
            let r = activate::rollback(&state)?;
            if cli.json {
                emit_json(&json!({ "event": "result", "ok": true, "rolled_back": r }));
            } else {
                println!(
                    "{} ({}) removed; the next boot starts the old system",
                    r.entry, r.description
                );
                if !r.files_removed {
                    println!(
                        "the kernel and initrd{} stay until `liverestore rollback` runs in the old system",
                        r.files_dir
                            .as_deref()
                            .map(|d| format!(" in {d}"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(0)
        }
        Command::Commit => {
            let c = activate::commit()?;
            if cli.json {
                emit_json(&json!({ "event": "result", "ok": true, "committed": c }));
            } else {
                match (c.boot_number, &c.grub_entry) {
                    (Some(n), _) => println!(
                        "Boot{n:04X} is first in BootOrder: this system now starts by default"
                    ),
                    (_, Some(id)) => println!(
                        "GRUB's default is now '{id}' (liverestore_default in grubenv): this system now starts by default"
                    ),
                    _ => {}
                }
                if let Some(o) = &c.old_system {
                    println!(
                        "the old system ({}, root {}, kernel {}) stays reachable: `liverestore rollback`",
                        o.hostname, o.root_device, o.kernel_release
                    );
                }
            }
            Ok(0)
        }
        Command::Initrd {
            name,
            output,
            append_to,
            helper,
        } => {
            let rec = state.load(&name)?;
            staged::revalidate(&rec)?;
            let (plan, early) = liverestore::boot::initrd::for_staging(&rec, helper.as_deref())?;
            let bytes = match &append_to {
                None => early,
                Some(base) => {
                    let mut all = std::fs::read(base)
                        .map_err(|e| Error::io("read the restored initrd", e).with_path(base))?;
                    liverestore::boot::initrd::append_early_boot(&mut all, &early);
                    all
                }
            };
            std::fs::write(&output, &bytes)
                .map_err(|e| Error::io("write the initramfs", e).with_path(&output))?;
            if cli.json {
                emit_json(&json!({
                    "event": "result", "ok": true, "output": output, "bytes": bytes.len(),
                    "modules": plan.modules, "extents": plan.extents.len(),
                    "dm_name": liverestore::boot::plan::DM_NAME,
                }));
            } else {
                println!(
                    "{}: {} bytes; {} and boot with rdinit={} (modules: {})",
                    output.display(),
                    bytes.len(),
                    match append_to {
                        Some(base) => format!(
                            "{} with the early-boot archive appended: boot it",
                            base.display()
                        ),
                        None =>
                            "append it to the restored initrd (padded to a multiple of 4 bytes)"
                                .into(),
                    },
                    liverestore::boot::initrd::INIT_PATH,
                    if plan.modules.is_empty() {
                        "built in".to_string()
                    } else {
                        plan.modules.join(", ")
                    }
                );
            }
            Ok(0)
        }
        Command::Scan { disk } => {
            let found = scan::scan(&disk, progress.as_ref())?;
            if cli.json {
                emit_json(&json!({ "event": "result", "disk": disk, "headers": found }));
            } else if found.is_empty() {
                println!("no liverestore headers on {}", disk.display());
            } else {
                for h in found {
                    match h.error {
                        None => println!(
                            "{:>14}  {} '{}' {} ({} bytes) container {}",
                            h.disk_offset,
                            h.id.unwrap_or_default(),
                            h.name.unwrap_or_default(),
                            h.state.unwrap_or_default(),
                            h.image_size.unwrap_or(0),
                            h.container.unwrap_or_default()
                        ),
                        Some(e) => println!("{:>14}  damaged header: {e}", h.disk_offset),
                    }
                }
            }
            Ok(0)
        }
    }
}

/// The `stage` result for one staging.
fn staging_json(
    rec: &liverestore::store::record::StagingRecord,
) -> Result<serde_json::Value, Error> {
    let part = rec.image.partition.as_ref();
    Ok(json!({
        "name": rec.name, "state": rec.state.as_str(),
        "image_size": rec.image.size, "sha256": rec.image.sha256,
        "kind": rec.image.kind, "disk_written": rec.image.disk_written,
        "disk_zeroed": rec.image.disk_zeroed,
        "container": rec.container.path, "disk": rec.disk.path,
        "extents": rec.image_map()?.extents().len(),
        "partition": part.map(|p| p.number),
        "image_offset": part.and_then(|p| p.entry()).map_or(0, |e| e.offset),
        "image_sha256": part.map_or(&rec.image.sha256, |p| &p.image_sha256),
    }))
}

fn main() -> ExitCode {
    if liverestore::boot::early_boot::is_early_boot() {
        liverestore::boot::early_boot::run();
    }
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = e.kind().exit_code();
            if json {
                emit_json(&json!({
                    "event": "error", "kind": e.kind().as_str(), "exit_code": code, "message": e.to_string(),
                }));
            }
            eprintln!("liverestore: error: {e}");
            ExitCode::from(code as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("5Q").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
