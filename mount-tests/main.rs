//! Tests that mount a real fastfs over a real backing directory and drive it with real
//! tools. They need root and /dev/fuse; where they cannot mount they fail and say why.
//! `FASTFS_TEST_PASSTHROUGH=on|off|auto` chooses the kernel passthrough mode and
//! `FASTFS_TEST_URING=on|off|auto` the transport (on needs `fuse.enable_uring`).

mod common;

mod caller;

mod cli;
mod copy;
mod deploy;
mod idmap;
mod inodes;
mod juicefs;
mod load;
mod locks;
mod native;
mod ops;
mod rsync;
mod safety;
mod uring;
