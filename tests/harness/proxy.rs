//! A fault-injecting TCP proxy for integration tests: it sits between the hub
//! and a spoke (or any client and server), forwards bytes unchanged in both
//! directions, and on command simulates a network partition by resetting every
//! open connection and black-holing new ones until healed, so tests can show
//! that event streams survive the outage and reconnect. It never inspects,
//! alters, reorders, delays or injects bytes (TLS and gRPC pass through
//! untouched), never listens on anything but 127.0.0.1, and never outlives its
//! [`FaultProxy`] handle: dropping the handle closes the listener and every
//! connection before `drop` returns.
//!
//! The proxy runs on its own thread with its own current-thread tokio runtime
//! rather than on the caller's runtime. Integration tests are mostly plain
//! `#[test]` functions (no runtime at all), and some drive their own runtime;
//! a dedicated thread works identically in both cases, keeps forwarding even
//! while the test thread blocks (e.g. in `std::thread::sleep` or a blocking
//! `block_on`), and makes shutdown deterministic: `Drop` stops the runtime and
//! joins the thread. Control methods only touch a `watch` channel and an
//! atomic, so they are synchronous and callable from any thread or task.
//!
//! Uses only std, tokio (features `rt`, `net`, `time`, `sync`, `io-util`) and
//! anyhow.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, anyhow};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Network state shared by the control handle and the proxy's tasks.
#[derive(Clone, Copy, Debug, Default)]
struct NetState {
    /// True while partitioned: new connections are black-holed.
    partitioned: bool,
    /// Incremented at the start of each partition. A forwarding connection
    /// remembers the epoch it started in and is cut as soon as the epoch
    /// changes; comparing epochs (rather than watching `partitioned`) means a
    /// `partition(); heal();` pair that completes before a task gets polled
    /// still cuts that task.
    epoch: u64,
    /// Set once by `Drop`; makes the accept loop return so the runtime stops.
    stopped: bool,
}

/// A TCP proxy on `127.0.0.1:<ephemeral>` forwarding to one upstream address,
/// with switchable partitions. See the module docs.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: watch::Sender<NetState>,
    connections: Arc<AtomicU64>,
    /// `Some` until `Drop` joins it.
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on `127.0.0.1:0` and forwards each accepted connection to
    /// `upstream` (connecting to it only when a client arrives, so the upstream
    /// may start later or restart).
    ///
    /// Synchronous so it can be called from a plain `#[test]`; it is also safe
    /// inside an async context, where it blocks only for the moment it takes
    /// the proxy thread to start its runtime.
    pub fn start(upstream: SocketAddr) -> anyhow::Result<FaultProxy> {
        // Bind on the caller's thread so the address is known (and bind errors
        // are reported) before `start` returns.
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("fault proxy: bind 127.0.0.1:0")?;
        let addr = listener.local_addr().context("fault proxy: local_addr")?;
        listener
            .set_nonblocking(true)
            .context("fault proxy: set_nonblocking")?;

        let (state, state_rx) = watch::channel(NetState::default());
        let connections = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&connections);
        // The runtime is built on the proxy thread, never on the caller's: a
        // tokio runtime must not be dropped inside an async context, which is
        // exactly where a failed `start` could otherwise drop it.
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<anyhow::Result<()>>(1);
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                let setup = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("fault proxy: build runtime")
                    .and_then(|rt| {
                        let listener = {
                            // `from_std` registers with the runtime's reactor.
                            let _guard = rt.enter();
                            TcpListener::from_std(listener)
                                .context("fault proxy: register listener")?
                        };
                        Ok((rt, listener))
                    });
                let (rt, listener) = match setup {
                    Ok(ok) => {
                        let _ = ready_tx.send(Ok(()));
                        ok
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(accept_loop(listener, upstream, state_rx, counter));
                // Dropping the runtime drops every connection task and so
                // closes every socket before the thread (and `Drop`) finishes.
                drop(rt);
            })
            .context("fault proxy: spawn thread")?;

        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                let _ = thread.join();
                return Err(anyhow!("fault proxy: thread exited during startup"));
            }
        }

        Ok(FaultProxy {
            addr,
            upstream,
            state,
            connections,
            thread: Some(thread),
        })
    }

    /// The address clients should connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address connections are forwarded to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Cuts the network. Every open connection is reset at once on both sides
    /// (RST, so peers see an error rather than a clean EOF, and bytes still in
    /// flight are discarded, as they would be lost in a real partition).
    /// Until [`heal`](Self::heal), new connections are accepted and held open
    /// without forwarding a byte: clients see a hang, not a refusal.
    /// Idempotent: calling it while partitioned changes nothing.
    pub fn partition(&self) {
        self.state.send_if_modified(|s| {
            if s.partitioned {
                return false;
            }
            s.partitioned = true;
            s.epoch += 1;
            true
        });
    }

    /// Ends the partition: new connections are forwarded again, and the
    /// connections black-holed during the partition are reset so their
    /// clients notice and reconnect. Idempotent.
    pub fn heal(&self) {
        self.state.send_if_modified(|s| {
            let was = s.partitioned;
            s.partitioned = false;
            was
        });
    }

    /// Whether a partition is in effect.
    pub fn is_partitioned(&self) -> bool {
        self.state.borrow().partitioned
    }

    /// Partitions, blocks the calling thread for `d`, then heals.
    ///
    /// Blocking is what a synchronous test wants; inside an async task use
    /// [`partition_for_async`](Self::partition_for_async) instead, so the
    /// caller's runtime (and the clients on it) keep running meanwhile.
    pub fn partition_for(&self, d: Duration) {
        self.partition();
        std::thread::sleep(d);
        self.heal();
    }

    /// Partitions, sleeps `d` without blocking the executor, then heals.
    /// Must be awaited on a tokio runtime with the time driver enabled.
    pub async fn partition_for_async(&self, d: Duration) {
        self.partition();
        tokio::time::sleep(d).await;
        self.heal();
    }

    /// Connections accepted so far, forwarded or black-holed. A client's
    /// `connect` can return before the proxy has accepted, so poll (or do a
    /// round trip first) rather than reading it right after connecting.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    /// Stops the listener and every connection, and waits for the proxy thread
    /// to finish (promptly: it only has to drop its tasks and sockets), so a
    /// connect to [`addr`](Self::addr) is refused once `drop` returns.
    fn drop(&mut self) {
        self.state.send_modify(|s| s.stopped = true);
        if let Some(thread) = self.thread.take() {
            // A panic on the proxy thread has already been printed; panicking
            // again inside `drop` would only risk an abort.
            let _ = thread.join();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mut state: watch::Receiver<NetState>,
    counter: Arc<AtomicU64>,
) {
    let mut stop = state.clone();
    let stopped = stop.wait_for(|s| s.stopped);
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            // Either `stopped` became true or the handle (the sender) is gone.
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let client = match accepted {
            Ok((client, _peer)) => client,
            Err(e) => {
                // Typically EMFILE or a connection aborted before accept.
                // Back off briefly instead of spinning, and keep serving.
                eprintln!("fault proxy {}: accept failed: {e}", upstream);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        counter.fetch_add(1, Ordering::SeqCst);
        // Without this, small gRPC frames could wait on Nagle + delayed ACK
        // and add latency that the test would wrongly blame on the system.
        let _ = client.set_nodelay(true);
        let now = *state.borrow_and_update();
        let rx = state.clone();
        if now.partitioned {
            tokio::spawn(black_hole(client, now.epoch, rx));
        } else {
            tokio::spawn(forward(client, upstream, now.epoch, rx));
        }
    }
}

/// Holds `client` open, reading nothing and sending nothing, until the
/// partition it arrived in ends; then resets it.
async fn black_hole(client: TcpStream, epoch: u64, mut state: watch::Receiver<NetState>) {
    // An error means the handle is gone; the runtime is shutting down and
    // will drop the socket anyway.
    if state
        .wait_for(|s| !s.partitioned || s.epoch != epoch)
        .await
        .is_ok()
    {
        reset(client);
    }
}

/// How a forwarded connection ended; computed first so that both sockets are
/// free again (no longer borrowed by the copy) when we act on it.
enum Ended {
    Clean,
    Failed,
    Cut,
}

async fn forward(
    mut client: TcpStream,
    upstream: SocketAddr,
    epoch: u64,
    mut state: watch::Receiver<NetState>,
) {
    // A partition cuts this connection even while it is still connecting.
    let cut = async move {
        let _ = state.wait_for(|s| s.epoch != epoch).await;
    };
    tokio::pin!(cut);

    let connected = tokio::select! {
        _ = &mut cut => None,
        c = TcpStream::connect(upstream) => c.ok(),
    };
    let Some(mut server) = connected else {
        // Upstream down (or cut mid-connect): reset the client so it fails
        // fast, as it would when connecting to a dead server directly.
        reset(client);
        return;
    };
    let _ = server.set_nodelay(true);

    let ended = tokio::select! {
        _ = &mut cut => Ended::Cut,
        r = tokio::io::copy_bidirectional(&mut client, &mut server) => match r {
            // Both directions reached EOF and were shut down in turn; the
            // FINs have been passed on, so a plain close is accurate.
            Ok(_) => Ended::Clean,
            Err(_) => Ended::Failed,
        },
    };
    match ended {
        Ended::Clean => {}
        // An error on one side (typically a reset) is passed on as a reset
        // rather than hidden behind a clean EOF.
        Ended::Failed | Ended::Cut => {
            reset(client);
            reset(server);
        }
    }
}

/// Closes `stream` with RST instead of FIN, so the peer sees an immediate
/// error even if it was only reading or had unacknowledged data outstanding.
fn reset(stream: TcpStream) {
    // `set_linger` is deprecated in newer tokio because a non-zero linger
    // blocks on close; zero never blocks, and this call (unlike
    // `set_zero_linger`) exists in every tokio 1.x the harness may lock.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::net::{Shutdown, TcpStream as StdStream};
    use std::sync::mpsc;
    use std::time::Instant;

    /// Promptness bound for "at once" (generous: CI machines are slow).
    const PROMPT: Duration = Duration::from_secs(1);

    /// A blocking echo server on its own threads. Each connection's thread
    /// reports on `closed` when the connection ends, so tests can check that
    /// the upstream side of a cut connection also notices.
    struct Echo {
        addr: SocketAddr,
        closed: mpsc::Receiver<()>,
    }

    fn echo_server() -> Echo {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, closed) = mpsc::channel();
        // Detached: blocked in accept until the test process exits.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let tx = tx.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = tx.send(());
                });
            }
        });
        Echo { addr, closed }
    }

    fn connect(addr: SocketAddr) -> StdStream {
        let s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(PROMPT)).unwrap();
        s
    }

    fn ping(s: &mut StdStream, msg: &[u8]) {
        s.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }

    /// Asserts the connection ends (EOF or error, not a timeout) within
    /// `PROMPT`, ignoring any bytes that were still in flight.
    fn assert_broken(s: &mut StdStream) {
        let start = Instant::now();
        s.set_read_timeout(Some(PROMPT)).unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("connection still open after {:?}", start.elapsed())
                }
                Err(_) => break,
            }
        }
        assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
    }

    /// Asserts nothing arrives for `d` (and the connection is not closed).
    fn assert_silent(s: &mut StdStream, d: Duration) {
        s.set_read_timeout(Some(d)).unwrap();
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + PROMPT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Deterministic, non-repeating-looking bytes (catches reordering and
    /// offsets that an all-zero buffer would not).
    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Sends `data` from a second thread while reading the echo here (so
    /// neither side deadlocks on full buffers), half-closes, and checks the
    /// echo is byte-identical and followed by EOF.
    fn round_trip(addr: SocketAddr, data: Vec<u8>) {
        let mut s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        let expected = data.clone();
        let writer = std::thread::spawn(move || {
            w.write_all(&data).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut got = Vec::with_capacity(expected.len());
        s.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "echoed bytes differ");
    }

    #[test]
    fn forwards_bytes_exactly_including_megabytes() {
        let echo = echo_server();
        let proxy = FaultProxy::start(echo.addr).unwrap();
        assert_eq!(proxy.upstream(), echo.addr);
        let mut s = connect(proxy.addr());
        ping(&mut s, b"hello");
        ping(&mut s, &[0, 255, 13, 10, 0]);
        drop(s);
        round_trip(proxy.addr(), pattern(5 * 1024 * 1024 + 7, 1));
    }

    #[test]
    fn many_concurrent_connections() {
        let echo = echo_server();
        let proxy = FaultProxy::start(echo.addr).unwrap();
        let addr = proxy.addr();
        let clients: Vec<_> = (0..32)
            .map(|i| std::thread::spawn(move || round_trip(addr, pattern(256 * 1024, i))))
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        assert_eq!(proxy.connections(), 32);
    }

    #[test]
    fn partition_resets_open_connections_on_both_sides() {
        let echo = echo_server();
        let proxy = FaultProxy::start(echo.addr).unwrap();
        let mut a = connect(proxy.addr());
        let mut b = connect(proxy.addr());
        ping(&mut a, b"a");
        ping(&mut b, b"b");
        proxy.partition();
        assert!(proxy.is_partitioned());
        // A reset, not a clean EOF: a client must not mistake a partition
        // for the server finishing the stream.
        let mut buf = [0u8; 8];
        let err = a.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionReset);
        assert_broken(&mut b);
        // The upstream's end of both connections closed too.
        for _ in 0..2 {
            echo.closed.recv_timeout(PROMPT).unwrap();
        }
    }

    #[test]
    fn partition_black_holes_new_connections_until_heal() {
        let echo = echo_server();
        let proxy = FaultProxy::start(echo.addr).unwrap();
        proxy.partition();
        // Connect succeeds (no refusal), but nothing comes back.
        let mut held = connect(proxy.addr());
        held.write_all(b"anyone there?").unwrap();
        assert_silent(&mut held, Duration::from_millis(500));
        // A repeated partition() must not release the held connection.
        proxy.partition();
        assert_silent(&mut held, Duration::from_millis(100));
        wait_until("black-holed connection counted", || {
            proxy.connections() == 1
        });

        proxy.heal();
        assert!(!proxy.is_partitioned());
        assert_broken(&mut held);
        let mut fresh = connect(proxy.addr());
        ping(&mut fresh, b"back again");
        assert_eq!(proxy.connections(), 2);
        // Heal is idempotent and leaves forwarding connections alone.
        proxy.heal();
        ping(&mut fresh, b"still here");
    }

    #[test]
    fn partition_for_blocks_then_heals() {
        let echo = echo_server();
        let proxy = FaultProxy::start(echo.addr).unwrap();
        let mut old = connect(proxy.addr());
        ping(&mut old, b"before");
        let start = Instant::now();
        proxy.partition_for(Duration::from_millis(200));
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(!proxy.is_partitioned());
        assert_broken(&mut old);
        let mut new = connect(proxy.addr());
        ping(&mut new, b"after");
    }

    #[test]
    fn quick_partition_and_heal_still_cuts() {
        let echo = echo_server();
        let proxy = FaultProxy::start(echo.addr).unwrap();
        let mut s = connect(proxy.addr());
        ping(&mut s, b"x");
        proxy.partition();
        proxy.heal();
        assert_broken(&mut s);
    }

    #[test]
    fn connections_counts_reconnects() {
        let echo = echo_server();
        let proxy = FaultProxy::start(echo.addr).unwrap();
        assert_eq!(proxy.connections(), 0);
        for i in 1..=3u64 {
            let mut s = connect(proxy.addr());
            ping(&mut s, b"n");
            assert_eq!(proxy.connections(), i);
        }
    }

    #[test]
    fn unreachable_upstream_resets_client() {
        // Grab a free port and close it so nothing listens there.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let proxy = FaultProxy::start(dead).unwrap();
        let mut s = connect(proxy.addr());
        assert_broken(&mut s);
    }

    #[test]
    fn drop_closes_listener_and_connections() {
        let echo = echo_server();
        let proxy = FaultProxy::start(echo.addr).unwrap();
        let addr = proxy.addr();
        let mut s = connect(addr);
        ping(&mut s, b"x");
        proxy.partition();
        let mut held = connect(addr);
        wait_until("held connection accepted", || proxy.connections() == 2);
        drop(proxy);
        let err = StdStream::connect(addr).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
        assert_broken(&mut s);
        assert_broken(&mut held);
        echo.closed.recv_timeout(PROMPT).unwrap();
    }

    #[test]
    fn usable_from_inside_a_tokio_runtime() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let echo = echo_server();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Start, control and drop all happen inside an async context on a
            // current-thread runtime: none of it may need this runtime to make
            // progress, or it would deadlock here.
            let proxy = FaultProxy::start(echo.addr).unwrap();
            let mut s = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
            s.write_all(b"async").await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"async");

            let (cut, ()) = tokio::join!(
                tokio::time::timeout(PROMPT, s.read(&mut buf)),
                proxy.partition_for_async(Duration::from_millis(100)),
            );
            assert!(
                matches!(cut, Ok(Ok(0) | Err(_))),
                "expected EOF or reset, got {cut:?}"
            );

            let mut s = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
            s.write_all(b"again").await.unwrap();
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"again");
            let addr = proxy.addr();
            drop(proxy);
            assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        });
    }
}
