//! Limits on the connections of the gRPC listener, before any call is authenticated.
//!
//! Every accepted TCP connection must fit under `--max-connections` overall and
//! `--max-connections-per-peer` from its address; one over either is closed at once.
//! Until it has sent its first bytes (a TLS ClientHello, or the HTTP/2 preface in
//! plaintext) it has `--handshake-timeout`, and tonic gives the TLS handshake the
//! same time again; a connection that sends nothing is closed then. Refusals are
//! counted in `logferry_connections_refused_total{reason}` and open connections in
//! `logferry_connections_open`. Streams per connection are HTTP/2's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` (`--max-streams-per-connection`).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use prometheus::{IntCounterVec, IntGauge};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub max_per_peer: usize,
    /// How long a new connection may stay silent.
    pub handshake_timeout: Duration,
}

/// The listener's metrics.
#[derive(Debug, Clone)]
pub struct ConnMetrics {
    pub open: IntGauge,
    pub refused: IntCounterVec,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// Open connections, shared by the accept loop and the connections' guards.
#[derive(Debug)]
struct Tally {
    counts: Mutex<Counts>,
    limits: ConnLimits,
    metrics: ConnMetrics,
}

impl Tally {
    /// Counts a new connection from `peer`, or says which limit it is over.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, &'static str> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.limits.max_connections {
            return Err("limit");
        }
        let from_peer = counts.per_peer.entry(peer).or_default();
        if *from_peer >= self.limits.max_per_peer {
            return Err("peer_limit");
        }
        *from_peer += 1;
        counts.total += 1;
        self.metrics.open.set(counts.total as i64);
        Ok(Slot {
            tally: self.clone(),
            peer,
        })
    }
}

/// A connection's place in the tally, given back when it closes.
#[derive(Debug)]
struct Slot {
    tally: Arc<Tally>,
    peer: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.tally.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                counts.per_peer.remove(&self.peer);
            }
        }
        self.tally.metrics.open.set(counts.total as i64);
    }
}

/// An accepted connection within the limits: the TCP stream, its slot, and the
/// deadline for its first bytes.
#[derive(Debug)]
pub struct LimitedConn {
    stream: TcpStream,
    _slot: Slot,
    /// `Some` until the peer has sent something.
    silence: Option<Pin<Box<Sleep>>>,
    refused: IntCounterVec,
}

impl AsyncRead for LimitedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.silence = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Some(silence) = &mut this.silence
                    && silence.as_mut().poll(cx).is_ready()
                {
                    this.silence = None;
                    this.refused.with_label_values(&["silent"]).inc();
                    debug!("closing a connection that sent nothing in time");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer sent nothing within the handshake timeout",
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for LimitedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl Connected for LimitedConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// The connections of `listener` that fit the limits; the others are closed as
/// they are accepted.
pub fn incoming(
    listener: TcpListener,
    limits: ConnLimits,
    metrics: ConnMetrics,
) -> impl Stream<Item = io::Result<LimitedConn>> {
    let tally = Arc::new(Tally {
        counts: Mutex::default(),
        limits,
        metrics,
    });
    futures::stream::unfold((listener, tally), |(listener, tally)| async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was
                    // taken: wait a moment rather than spin, and go on.
                    warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match tally.admit(peer.ip()) {
                Ok(slot) => {
                    let _ = stream.set_nodelay(true);
                    let conn = LimitedConn {
                        stream,
                        _slot: slot,
                        silence: Some(Box::pin(tokio::time::sleep(tally.limits.handshake_timeout))),
                        refused: tally.metrics.refused.clone(),
                    };
                    return Some((Ok(conn), (listener, tally)));
                }
                Err(reason) => {
                    tally.metrics.refused.with_label_values(&[reason]).inc();
                    debug!(%peer, reason, "refusing a connection");
                    drop(stream);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> ConnMetrics {
        ConnMetrics {
            open: IntGauge::new("open", "open").unwrap(),
            refused: IntCounterVec::new(prometheus::Opts::new("refused", "refused"), &["reason"])
                .unwrap(),
        }
    }

    #[test]
    fn slots_count_overall_and_per_peer_and_come_back() {
        let metrics = metrics();
        let tally = Arc::new(Tally {
            counts: Mutex::default(),
            limits: ConnLimits {
                max_connections: 3,
                max_per_peer: 2,
                handshake_timeout: Duration::from_secs(1),
            },
            metrics: metrics.clone(),
        });
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 3].into();
        let a1 = tally.admit(a).unwrap();
        let _a2 = tally.admit(a).unwrap();
        assert_eq!(tally.admit(a).unwrap_err(), "peer_limit");
        let _b1 = tally.admit(b).unwrap();
        assert_eq!(tally.admit(b).unwrap_err(), "limit");
        assert_eq!(metrics.open.get(), 3);
        drop(a1);
        assert_eq!(metrics.open.get(), 2);
        let _a3 = tally.admit(a).unwrap();
    }
}
