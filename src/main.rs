//! The `fastfs` command: parse arguments, run the library, report errors.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};
use fastfs::{Config, MountOptions, logger};

/// Mount BACKING at MOUNTPOINT through FUSE, with copies offloaded to the kernel.
///
/// Every operation in the mount is passed through to the files in BACKING. A copy inside
/// the mount (cp, install, rsync, ...) becomes copy_file_range(2) on the backing files: a
/// reflink on XFS and btrfs, an in-kernel copy on ext4.
///
/// Unmount with `umount MOUNTPOINT` or `fusermount3 -u MOUNTPOINT`, or send SIGTERM to a
/// foreground fastfs.
#[derive(Parser)]
#[command(
    name = "fastfs",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Where to mount (an existing directory outside BACKING).
    #[arg(required = true)]
    mountpoint: Option<PathBuf>,

    /// The directory whose files the mount shows.
    #[arg(required = true)]
    backing: Option<PathBuf>,

    /// Mount options, comma-separated: ro, rw, allow_other (implies default_permissions
    /// and acl), default_permissions, acl/noacl, nosuid/suid, nodev/dev, noexec, noatime,
    /// threads=N (default 4),
    /// passthrough=auto|on|off (default auto), uring=auto|on|off (default auto: FUSE over
    /// io_uring where the kernel offers it), file_handles=auto|off (default auto),
    /// locks=backing|local (default backing), idmap (allow idmapped binds),
    /// cache=always|auto|never (default always:
    /// only the mount changes BACKING; auto: others change it too; never: no caching).
    #[arg(short = 'o', value_name = "OPT[,OPT...]", action = ArgAction::Append)]
    options: Vec<String>,

    /// Stay in the foreground; unmount cleanly on SIGINT/SIGTERM.
    #[arg(short, long)]
    foreground: bool,

    /// Kernel passthrough of reads and writes (same as -o passthrough=...).
    #[arg(long, value_name = "auto|on|off")]
    passthrough: Option<String>,

    /// FUSE over io_uring (same as -o uring=...): on needs Linux 6.14+ and
    /// `echo Y > /sys/module/fuse/parameters/enable_uring` (fuse.enable_uring).
    #[arg(long, value_name = "auto|on|off")]
    uring: Option<String>,

    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,

    /// Write the log to this file (default: stderr in the foreground, syslog when detached).
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the live counters of a mounted fastfs, one `name value` per line.
    Stats {
        /// The mountpoint of a running fastfs.
        mountpoint: PathBuf,
    },
}

/// mount(8) runs `mount.fuse.fastfs BACKING MOUNTPOINT [-sfnv] [-N NS] [-o OPTS] [-t TYPE]`
/// for `mount -t fuse.fastfs`; turn that into fastfs's own argument order.
fn mount_helper_args(args: Vec<String>) -> Vec<String> {
    let mut out = vec!["fastfs".to_string()];
    let mut positional = Vec::new();
    let mut iter = args.into_iter().skip(1);
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "-o" => out.extend(["-o".to_string(), iter.next().unwrap_or_default()]),
            "-t" | "-N" => {
                iter.next();
            }
            "-v" => out.push("-v".into()),
            "-f" => out.push("-f".into()),
            // -s (sloppy) and -n (no mtab) mean nothing here.
            "-s" | "-n" => {}
            _ => positional.push(arg),
        }
    }
    positional.reverse();
    out.extend(positional);
    out
}

fn main() -> ExitCode {
    fastfs::close_inherited_descriptors();
    let args: Vec<String> = std::env::args().collect();
    let invoked_as = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cli = if invoked_as.starts_with("mount.") {
        Cli::parse_from(mount_helper_args(args))
    } else {
        Cli::parse_from(args)
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fastfs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), fastfs::Error> {
    if let Some(Command::Stats { mountpoint }) = cli.command {
        print!("{}", fastfs::read_stats(&mountpoint)?);
        return Ok(());
    }
    let (Some(mountpoint), Some(backing)) = (cli.mountpoint, cli.backing) else {
        unreachable!("clap requires both paths without a subcommand");
    };
    let mut options = MountOptions::parse(&cli.options)?;
    if let Some(mode) = &cli.passthrough {
        options.passthrough = fastfs::config::parse_passthrough(mode)?;
    }
    if let Some(mode) = &cli.uring {
        options.uring = fastfs::config::parse_uring(mode)?;
    }
    let config = Config::new(&mountpoint, &backing, options)?;
    let target = match &cli.log_file {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(logger::Target::File)
            .map_err(|e| fastfs::Error(format!("log file {}: {e}", path.display())))?,
        None if cli.foreground => logger::Target::Stderr,
        None => logger::Target::Syslog,
    };
    logger::init(cli.verbose, target);
    fastfs::run(&config, cli.foreground)
}
