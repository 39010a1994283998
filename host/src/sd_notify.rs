//! systemd's readiness protocol: a datagram to `$NOTIFY_SOCKET` (`READY=1`, and
//! `MAINPID=` when an upgraded process takes over from the one systemd started).

use std::os::unix::net::UnixDatagram;

/// Sends `state` to systemd when it asked for notifications; otherwise does nothing.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract socket name (Linux).
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::debug!(error = %e, "cannot notify systemd");
    }
}
