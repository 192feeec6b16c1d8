//! The receive loop of one socket: decode, admit, handle, act. The decisions are [`step`]'s
//! (pure); this loop only takes the locks, reads the clocks and carries the actions out.

use std::{net::Ipv4Addr, sync::Arc, time::Instant};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::util::logs::EXCHANGE_LOG;

use super::{
    server::Ingress,
    service::Committed,
    step::{self, Action, Log, Now, Reply, Step},
    unix_now, DhcpService,
};

impl DhcpService {
    /// Serves `sock` (bound on `iface`, whose address is `server_ip`, serving as `port`: 67,
    /// or 4011 for proxyDHCP boot-server requests) until `cancel` fires; an error only when
    /// the socket fails or the state lock is poisoned.
    pub(super) async fn receive_loop(
        self: Arc<Self>,
        iface: String,
        server_ip: Ipv4Addr,
        port: u16,
        sock: Arc<UdpSocket>,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let iface: Arc<str> = Arc::from(iface);
        let mut buf = vec![0u8; 2048];
        let started = Instant::now();
        let mut step = Step::new(self.subnets.clone());
        loop {
            let (n, peer) = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = sock.recv_from(&mut buf) => r?,
            };
            let req = step::decode(&buf[..n], peer).and_then(|req| {
                let ms = started.elapsed().as_millis() as u64;
                step::admit(self.limiter.lock().ok().as_deref_mut(), &req, ms)?;
                Ok(req)
            });
            let t0 = Instant::now();
            let actions = match req {
                Err(refused) => refused,
                Ok(req) => {
                    let ingress = Ingress {
                        iface: &iface,
                        server_ip,
                        port,
                        peer: req.peer,
                    };
                    let now = Now {
                        ms: started.elapsed().as_millis() as u64,
                        unix: unix_now(),
                    };
                    let decision = {
                        let Ok(mut server) = self.server.lock() else {
                            return Err(std::io::Error::other("DHCP state lock poisoned"));
                        };
                        let decision = step.decide(&mut server, &req, &ingress, now);
                        if let Some((subnet, used)) = decision.leases_active() {
                            self.metrics
                                .leases
                                .with_label_values(&[subnet])
                                .set(used as i64);
                        }
                        decision
                    };
                    self.metrics.decision.observe(t0.elapsed().as_secs_f64());
                    step.finish(decision, now)
                }
            };
            self.act(&sock, &iface, actions).await;
        }
    }

    /// Carries out one datagram's actions, in order. Commits run in the background, so a
    /// slow journal never holds the loop; their replies follow once durable.
    async fn act(self: &Arc<Self>, sock: &Arc<UdpSocket>, iface: &Arc<str>, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Dropped(reason) => self.count_dropped(reason.as_str()),
                Action::Packet { kind, outcome } => self.count_packet(kind, outcome),
                Action::Exhausted { subnet } => self
                    .metrics
                    .exhausted
                    .with_label_values(&[subnet.as_str()])
                    .inc(),
                Action::Log(line) => log(line),
                Action::Record(r) => self.ledger.record(r.mac, r.event, r.ip.map(Into::into)),
                Action::Send(reply) => self.reply(sock, iface, reply).await,
                Action::Commit {
                    record,
                    then,
                    if_lost,
                } => {
                    let this = Arc::clone(self);
                    let sock = Arc::clone(sock);
                    let iface = Arc::clone(iface);
                    tokio::spawn(async move {
                        let reply = match this.commit(record).await {
                            Committed::Durable => then,
                            Committed::Lost => if_lost,
                            Committed::Failed => None,
                        };
                        if let Some(reply) = reply {
                            this.reply(&sock, &iface, *reply).await;
                        }
                    });
                }
            }
        }
    }

    /// Sends `reply`, then counts it, logs it and records it in the ledger.
    async fn reply(&self, sock: &UdpSocket, iface: &str, reply: Reply) {
        self.send(sock, &reply.out, reply.dest).await;
        self.count_packet(reply.kind, reply.outcome);
        let r = reply.record;
        let line = reply.line;
        info!(
            target: EXCHANGE_LOG,
            proto = "dhcp",
            reply = reply.outcome,
            mac = %r.mac,
            ip = r.ip.map(tracing::field::display),
            xid = %format_args!("{:#010x}", line.xid),
            iface,
            path = "userspace",
            file = line.file.as_deref(),
            relay = line.relay.map(tracing::field::display),
            "DHCP {} to {}",
            reply.outcome,
            r.mac
        );
        self.ledger.record(r.mac, r.event, r.ip.map(Into::into));
    }

    fn count_dropped(&self, reason: &str) {
        self.metrics.dropped.with_label_values(&[reason]).inc();
    }

    fn count_packet(&self, kind: &str, outcome: &str) {
        self.metrics
            .packets
            .with_label_values(&[kind, outcome])
            .inc();
    }
}

fn log(line: Log) {
    match line {
        Log::Dropped { peer, reason } => {
            debug!(%peer, reason = reason.as_str(), "dropped DHCP packet")
        }
        Log::NoReply { mac, why } => debug!(%mac, why, "no reply"),
        Log::PoolExhausted { subnet, mac } => warn!(
            subnet = subnet.as_str(),
            "DHCP pool exhausted: DISCOVER from {mac} not answered"
        ),
        Log::ReservationWaits { mac, why } => {
            info!(%mac, "{why}: a pool address meanwhile")
        }
        Log::CannotFetch { mac, file } => warn!(
            %mac,
            "iPXE without HTTPS (its option 175 lacks it) was told {file}, which it cannot \
             fetch: chainload an iPXE built with HTTPS (docs/troubleshooting.md, HTTPS fails)"
        ),
        Log::EncodeFailed { mac, error } => {
            warn!(%mac, error = %error, "encoding a DHCP reply failed")
        }
    }
}
