//! `server.workers = N`: N single-threaded event loops, as nginx's workers. The loop
//! the gateway starts on is worker 0 (it also runs the background tasks: gossip,
//! probes, watchers); workers 1..N each get a thread, a current-thread runtime and
//! their own listeners (SO_REUSEPORT siblings bound or inherited at launch), and serve
//! connections start to end on that thread: no work stealing on the data path.

use std::io;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use super::{Listeners, WorkerListeners, serve_loop};
use crate::gateway::Gateway;
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

/// Starts workers `1..N` on their listeners; they stop when `stop` turns true.
pub(super) fn spawn(
    workers: Vec<WorkerListeners>,
    terminator: Option<Terminator>,
    gateway: &Arc<Gateway>,
    stop: &watch::Receiver<bool>,
) -> io::Result<Extra> {
    let mut done = Vec::new();
    for (index, listeners) in workers.into_iter().enumerate() {
        let index = index + 1;
        let tls = match (listeners.tls, &terminator) {
            (Some(listener), Some(terminator)) => Some((listener, terminator.clone())),
            _ => None,
        };
        let plain = listeners.plain;
        let (report, finished) = oneshot::channel();
        let (gateway, stop) = (gateway.clone(), stop.clone());
        std::thread::Builder::new()
            .name(format!("fluxgate-w{index}")) // 15 bytes at most in /proc comm
            .spawn(move || run(index, plain, tls, gateway, stop, report))?;
        done.push(finished);
    }
    Ok(Extra { done })
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
        workers: Vec::new(),
    })
}
