//! Listening sockets handed from a running process to its successor on a binary
//! upgrade: a list of labelled file descriptors in `FLUXGATE_INHERIT_FDS`
//! (`http:3,http:4,tls:5,gossip-tcp:6,gossip-udp:7`), any number per label.
//!
//! Labels, not positions: a process with N workers (one `SO_REUSEPORT` listener each)
//! hands over N `http` sockets, and its successor takes whatever it finds for a label.

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The environment variable listing the inherited sockets.
pub const INHERIT_ENV: &str = "FLUXGATE_INHERIT_FDS";

/// The plain HTTP listener(s).
pub const HTTP: &str = "http";
/// The TLS listener(s).
pub const TLS: &str = "tls";
/// The gossip TCP listener.
pub const GOSSIP_TCP: &str = "gossip-tcp";
/// The gossip UDP socket.
pub const GOSSIP_UDP: &str = "gossip-udp";

/// Most sockets one hand-off may carry (a bound on what the environment can ask for).
const MAX_ENTRIES: usize = 1024;

/// Why the inherited sockets cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("{INHERIT_ENV}: \"{0}\" is not label:fd")]
    Syntax(String),
    #[error("{INHERIT_ENV}: more than {MAX_ENTRIES} sockets")]
    TooMany,
    #[error("{INHERIT_ENV}: fd {fd} ({label}) is not an open socket: {source}")]
    NotASocket {
        label: String,
        fd: RawFd,
        source: std::io::Error,
    },
}

/// Parses `label:fd,label:fd` (pure).
pub fn parse(text: &str) -> Result<Vec<(String, RawFd)>, HandoffError> {
    let mut out = Vec::new();
    for entry in text.split(',').filter(|e| !e.is_empty()) {
        if out.len() == MAX_ENTRIES {
            return Err(HandoffError::TooMany);
        }
        let bad = || HandoffError::Syntax(entry.chars().take(64).collect());
        let (label, fd) = entry.split_once(':').ok_or_else(bad)?;
        let fd: RawFd = fd.parse().map_err(|_| bad())?;
        let label_ok = !label.is_empty()
            && label.len() <= 32
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        // 0-2 are stdio: never a socket we handed over.
        if !label_ok || fd < 3 {
            return Err(bad());
        }
        out.push((label.to_owned(), fd));
    }
    Ok(out)
}

/// Writes the list `parse` reads.
pub fn encode<'a>(entries: impl IntoIterator<Item = (&'a str, RawFd)>) -> String {
    entries
        .into_iter()
        .map(|(label, fd)| format!("{label}:{fd}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Sockets a process inherited from the one it replaces, taken by label as the
/// startup needs them. Whatever is not taken is closed when this is dropped.
#[derive(Debug, Default)]
pub struct Inherited {
    entries: Vec<(String, socket2::Socket)>,
}

impl Inherited {
    /// The sockets named by `FLUXGATE_INHERIT_FDS`, if set (empty otherwise).
    pub fn from_env() -> Result<Self, HandoffError> {
        match std::env::var(INHERIT_ENV) {
            Ok(text) => Self::adopt(&parse(&text)?),
            Err(_) => Ok(Self::default()),
        }
    }

    /// Takes ownership of inherited descriptors, checking each is an open socket.
    fn adopt(list: &[(String, RawFd)]) -> Result<Self, HandoffError> {
        let mut entries = Vec::with_capacity(list.len());
        for (label, fd) in list {
            check_open(*fd).map_err(|source| HandoffError::NotASocket {
                label: label.clone(),
                fd: *fd,
                source,
            })?;
            // SAFETY: the parent process passed this descriptor to us for this purpose
            // (it cleared close-on-exec on it and named it in INHERIT_ENV), it is open
            // (checked above), and nothing else in this process owns it: it is adopted
            // once, here.
            let socket = unsafe { socket2::Socket::from_raw_fd(*fd) };
            // A socket has a type; anything else (a file, a pipe) fails here.
            socket.r#type().map_err(|source| HandoffError::NotASocket {
                label: label.clone(),
                fd: *fd,
                source,
            })?;
            // Not passed on to processes this one starts, unless it hands them over.
            let _ = set_cloexec(*fd, true);
            let _ = socket.set_nonblocking(true);
            entries.push((label.clone(), socket));
        }
        Ok(Self { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first inherited socket with `label` bound to `addr` (port 0 = any port),
    /// removed from the set.
    pub fn take(&mut self, label: &str, addr: SocketAddr) -> Option<socket2::Socket> {
        let index = self.entries.iter().position(|(l, socket)| {
            l == label
                && socket
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .is_some_and(|bound| same_address(bound, addr))
        })?;
        Some(self.entries.remove(index).1)
    }

    /// Labels left untaken (logged: the new config no longer listens there).
    pub fn leftover(&self) -> Vec<String> {
        self.entries.iter().map(|(l, _)| l.clone()).collect()
    }
}

/// An inherited socket matches a configured address when the IPs are equal and the
/// port is equal or was left to the system (0).
fn same_address(bound: SocketAddr, wanted: SocketAddr) -> bool {
    bound.ip() == wanted.ip() && (wanted.port() == 0 || bound.port() == wanted.port())
}

/// Sets or clears close-on-exec on `fd`. Async-signal-safe (one `fcntl` pair), so a
/// child may call it between fork and exec.
pub fn set_cloexec(fd: RawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD read and write only the descriptor's flags; an invalid
    // descriptor is reported as an error, not undefined behaviour.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        if libc::fcntl(fd, libc::F_SETFD, flags) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn check_open(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFD only reads the descriptor's flags; an unopened number gives
    // EBADF, which is what this checks.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// What a running process can hand over: duplicates of its listening sockets (the
/// same kernel sockets: a connection queued on one is queued on all), by label.
#[derive(Debug, Default)]
pub struct Handoff {
    entries: Vec<(&'static str, OwnedFd)>,
}

impl Handoff {
    /// Adds a duplicate of `socket` under `label`.
    pub fn add(&mut self, label: &'static str, socket: &impl AsFd) -> std::io::Result<()> {
        let dup = socket.as_fd().try_clone_to_owned()?;
        self.entries.push((label, dup));
        Ok(())
    }

    /// The descriptors a successor must inherit (close-on-exec cleared in the child).
    pub fn fds(&self) -> Vec<RawFd> {
        self.entries.iter().map(|(_, fd)| fd.as_raw_fd()).collect()
    }

    /// The `FLUXGATE_INHERIT_FDS` value naming them.
    pub fn env_value(&self) -> String {
        encode(self.entries.iter().map(|(l, fd)| (*l, fd.as_raw_fd())))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labelled_lists_of_any_length() {
        let list = parse("http:3,http:4,tls:5,gossip-udp:9").unwrap();
        assert_eq!(
            list,
            vec![
                ("http".to_owned(), 3),
                ("http".to_owned(), 4),
                ("tls".to_owned(), 5),
                ("gossip-udp".to_owned(), 9)
            ]
        );
        assert_eq!(
            encode(list.iter().map(|(l, fd)| (l.as_str(), *fd))),
            "http:3,http:4,tls:5,gossip-udp:9"
        );
        assert!(parse("").unwrap().is_empty());
        for bad in ["http", "http:x", "HTTP:3", "http:1", ":3", "a b:3"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn adopted_sockets_are_taken_by_label_and_address() {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut handoff = Handoff::default();
        handoff.add(HTTP, &a).unwrap();
        handoff.add(TLS, &b).unwrap();
        // What the child does with the parent's list (here: the same process, so the
        // duplicates are adopted from the handoff's own descriptors).
        let list = parse(&handoff.env_value()).unwrap();
        let fds: Vec<OwnedFd> = handoff.entries.drain(..).map(|(_, fd)| fd).collect();
        let mut inherited = Inherited::adopt(&list).unwrap();
        // Ownership moved to `inherited`: forget the originals without closing them.
        for fd in fds {
            std::mem::forget(fd);
        }
        assert!(inherited.take(HTTP, b_addr).is_none(), "wrong label");
        let http = inherited
            .take(HTTP, "127.0.0.1:0".parse().unwrap())
            .unwrap();
        assert_eq!(http.local_addr().unwrap().as_socket(), Some(a_addr));
        assert!(inherited.take(TLS, b_addr).is_some());
        assert!(inherited.is_empty());
        assert!(Inherited::adopt(&[("http".to_owned(), 999_999)]).is_err());
    }
}
