//! The I/O priority of the calling thread (`ioprio_set(2)`), as `ionice`
//! sets it: background work (`export`) reads in the idle class, so the
//! running system's own I/O goes first. Threads created afterwards inherit
//! it. rustix has no binding for these two syscalls, hence `libc`.
//!
//! The class is honoured by the BFQ and mq-deadline schedulers; under
//! `none` (the usual choice for NVMe) and on loop devices it is recorded
//! but changes nothing, which [`IoPriority::describe`] says.

use crate::error::{Error, Result};

/// `IOPRIO_WHO_PROCESS`: with who = 0, the calling thread.
const IOPRIO_WHO_PROCESS: libc::c_int = 1;
const IOPRIO_CLASS_SHIFT: u32 = 13;

/// An I/O scheduling class, as in `linux/ioprio.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoClass {
    None,
    Realtime(u8),
    BestEffort(u8),
    Idle,
}

/// What `ioprio_get(2)` returns, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoPriority(pub IoClass);

impl IoPriority {
    /// The raw value for `ioprio_set(2)`.
    pub fn encode(self) -> u32 {
        let (class, data) = match self.0 {
            IoClass::None => (0, 0),
            IoClass::Realtime(l) => (1, u32::from(l.min(7))),
            IoClass::BestEffort(l) => (2, u32::from(l.min(7))),
            IoClass::Idle => (3, 0),
        };
        (class << IOPRIO_CLASS_SHIFT) | data
    }

    pub fn decode(raw: u32) -> IoPriority {
        let level = (raw & 0x7) as u8;
        IoPriority(match raw >> IOPRIO_CLASS_SHIFT {
            1 => IoClass::Realtime(level),
            2 => IoClass::BestEffort(level),
            3 => IoClass::Idle,
            _ => IoClass::None,
        })
    }

    /// As `ionice -p` prints it.
    pub fn describe(self) -> String {
        match self.0 {
            IoClass::None => "none".into(),
            IoClass::Realtime(l) => format!("realtime: prio {l}"),
            IoClass::BestEffort(l) => format!("best-effort: prio {l}"),
            IoClass::Idle => "idle".into(),
        }
    }
}

/// Put the calling thread (and the threads it creates from now on) in
/// `prio`.
pub fn set_current(prio: IoPriority) -> Result<()> {
    // SAFETY: ioprio_set takes three integers and touches no memory of
    // ours; the return value is checked.
    let r = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            0,
            prio.encode() as libc::c_int,
        )
    };
    if r < 0 {
        return Err(Error::io("ioprio_set", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The calling thread's I/O priority, as the kernel has it.
pub fn current() -> Result<IoPriority> {
    // SAFETY: as in set_current: integers in, an integer out.
    let r = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) };
    if r < 0 {
        return Err(Error::io("ioprio_get", std::io::Error::last_os_error()));
    }
    Ok(IoPriority::decode(r as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_the_kernels() {
        // linux/ioprio.h: IOPRIO_PRIO_VALUE(IOPRIO_CLASS_IDLE, 0) = 3 << 13
        assert_eq!(IoPriority(IoClass::Idle).encode(), 0x6000);
        assert_eq!(IoPriority(IoClass::BestEffort(4)).encode(), 0x4004);
        for p in [
            IoClass::None,
            IoClass::Realtime(2),
            IoClass::BestEffort(7),
            IoClass::Idle,
        ] {
            assert_eq!(IoPriority::decode(IoPriority(p).encode()).0, p);
        }
    }

    #[test]
    fn a_thread_can_go_idle_and_its_children_inherit_it() {
        std::thread::spawn(|| {
            set_current(IoPriority(IoClass::Idle)).unwrap();
            assert_eq!(current().unwrap().0, IoClass::Idle);
            let child = std::thread::spawn(|| current().unwrap()).join().unwrap();
            assert_eq!(child.0, IoClass::Idle);
        })
        .join()
        .unwrap();
    }
}
