//! A small logger: to stderr in the foreground, to a file with `--log-file`, and to
//! syslog once the daemon has detached from the terminal.

use std::fs::File;
use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};
use parking_lot::Mutex;

use crate::sys;

pub enum Target {
    Stderr,
    File(File),
    Syslog,
}

struct Logger {
    target: Mutex<Target>,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut target = self.target.lock();
        match &mut *target {
            Target::Stderr => eprintln!("fastfs: {}: {}", record.level(), record.args()),
            Target::File(f) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let _ = writeln!(
                    f,
                    "{}.{:03} {} {}",
                    now.as_secs(),
                    now.subsec_millis(),
                    record.level(),
                    record.args()
                );
            }
            Target::Syslog => {
                let priority = match record.level() {
                    Level::Error => libc::LOG_ERR,
                    Level::Warn => libc::LOG_WARNING,
                    Level::Info => libc::LOG_INFO,
                    Level::Debug | Level::Trace => libc::LOG_DEBUG,
                };
                sys::syslog(priority, &record.args().to_string());
            }
        }
    }

    fn flush(&self) {
        if let Target::File(f) = &mut *self.target.lock() {
            let _ = f.flush();
        }
    }
}

/// Installs the logger; `verbosity` 0 logs warnings and errors, 1 info, 2 debug, 3 trace.
pub fn init(verbosity: u8, target: Target) {
    if matches!(target, Target::Syslog) {
        sys::openlog(c"fastfs");
    }
    let level = match verbosity {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    if log::set_boxed_logger(Box::new(Logger {
        target: Mutex::new(target),
    }))
    .is_ok()
    {
        log::set_max_level(level);
    }
}
