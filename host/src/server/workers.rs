//! `server.workers = N`: N single-threaded event loops, as nginx's workers. The loop
//! the gateway starts on is worker 0 (it also runs the background tasks: gossip,
//! probes, watchers); workers 1..N each get a thread, a current-thread runtime and
//! their own listener (an SO_REUSEPORT sibling), and serve connections start to end
//! on that thread: no work stealing on the data path.

use std::io;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use super::{Listeners, serve_loop};
use crate::gateway::Gateway;
use crate::sockets;
use crate::tls::{Terminator, TlsListener};

/// The extra workers; each reports on its channel once it has drained.
pub(super) struct Extra {
    done: Vec<oneshot::Receiver<()>>,
}

impl Extra {
    /// Waits for every extra worker to finish its drain.
    pub(super) async fn finished(self) {
        for done in self.done {
            let _ = done.await;
        }
    }
}

/// Starts workers `1..count` on `listeners`' addresses; they stop when `stop` turns
/// true.
pub(super) fn spawn(
    listeners: &Listeners,
    gateway: &Arc<Gateway>,
    count: usize,
    stop: &watch::Receiver<bool>,
) -> io::Result<Extra> {
    let mut done = Vec::new();
    for index in 1..count {
        let plain = sockets::sibling(&as_std(&listeners.plain)?, sockets::ACCEPT_BACKLOG)?;
        let tls = match &listeners.tls {
            Some(tls) => Some((
                sockets::sibling(&as_std(&tls.listener)?, sockets::ACCEPT_BACKLOG)?,
                tls.terminator.clone(),
            )),
            None => None,
        };
        let (report, finished) = oneshot::channel();
        let (gateway, stop) = (gateway.clone(), stop.clone());
        std::thread::Builder::new()
            .name(format!("fluxgate-w{index}")) // 15 bytes at most in /proc comm
            .spawn(move || run(index, plain, tls, gateway, stop, report))?;
        done.push(finished);
    }
    Ok(Extra { done })
}

/// A borrowed view of a tokio listener as a std one (for `sockets::sibling`).
fn as_std(listener: &TcpListener) -> io::Result<std::net::TcpListener> {
    use std::os::fd::AsFd;
    Ok(std::net::TcpListener::from(
        listener.as_fd().try_clone_to_owned()?,
    ))
}

/// One extra worker's thread: its runtime, its accept loop, until stopped and drained.
fn run(
    index: usize,
    plain: std::net::TcpListener,
    tls: Option<(std::net::TcpListener, Terminator)>,
    gateway: Arc<Gateway>,
    mut stop: watch::Receiver<bool>,
    report: oneshot::Sender<()>,
) {
    crate::worker::set_index(index);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(worker = index, error = %e, "cannot start a worker's runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let listeners = match listeners(plain, tls) {
            Ok(listeners) => listeners,
            Err(e) => {
                tracing::error!(worker = index, error = %e, "a worker cannot listen");
                return;
            }
        };
        let stopped = async move {
            let _ = stop.wait_for(|stop| *stop).await;
        };
        if let Err(e) = serve_loop(listeners, gateway, stopped).await {
            tracing::error!(worker = index, error = %e, "a worker stopped serving");
        }
    });
    let _ = report.send(());
}

fn listeners(
    plain: std::net::TcpListener,
    tls: Option<(std::net::TcpListener, Terminator)>,
) -> io::Result<Listeners> {
    Ok(Listeners {
        plain: TcpListener::from_std(plain)?,
        tls: match tls {
            Some((listener, terminator)) => Some(TlsListener {
                listener: TcpListener::from_std(listener)?,
                terminator,
            }),
            None => None,
        },
    })
}
