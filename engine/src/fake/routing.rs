//! [`FakeHost`] as the host's network (health answers per container, the front through the
//! routing) and as an nginx-like traffic driver (a file, a running configuration, and modes in
//! which it lies).

use std::net::IpAddr;

use async_trait::async_trait;

use super::{DriverMode, FakeHost};
use crate::deploy::net::{HostNetwork, HttpProbe};
use crate::deploy::traffic::{TrafficError, TrafficSwitch, Upstream};

#[async_trait]
impl HostNetwork for FakeHost {
    async fn http_status(&self, probe: &HttpProbe<'_>, _timeout: std::time::Duration) -> Result<u16, String> {
        let port = probe.port;
        self.call("net.http", false, |s| {
            if port == s.front_port {
                // Through the routing: the container it goes to answers, if its image serves
                // the verification path.
                let Some(to) = s.running.clone() else { return Ok(502) };
                let verifies = s
                    .containers
                    .values()
                    .find(|c| c.running && c.port == Some(to.port))
                    .and_then(|c| s.images.get(&c.image_id))
                    .is_some_and(|i| i.verifies);
                return match s.answer(to.port) {
                    Ok(true) if verifies => Ok(200),
                    Ok(_) => Ok(503),
                    Err(_) => Ok(502),
                };
            }
            s.answer(port).map(|ok| if ok { 200 } else { 503 })
        })
        .await
    }

    async fn port_in_use(&self, _ip: IpAddr, port: u16) -> Option<String> {
        self.call("net.port_in_use", false, |s| {
            let taken =
                s.held_ports.contains(&port) || s.containers.values().any(|c| c.running && c.port == Some(port));
            taken.then(|| "is already in use by another process".to_owned())
        })
        .await
    }
}

#[async_trait]
impl TrafficSwitch for FakeHost {
    fn driver(&self) -> &'static str {
        "fake-nginx"
    }

    async fn current(&self) -> Result<Option<Upstream>, TrafficError> {
        Ok(self.call("traffic.current", false, |s| s.file.clone()).await)
    }

    async fn switch(&self, to: &Upstream) -> Result<(), TrafficError> {
        let previous = self.call("traffic.write", true, |s| s.file.replace(to.clone())).await;
        let refused = self
            .call("traffic.test", true, |s| {
                if s.test_refuses {
                    s.file = previous.clone();
                }
                s.test_refuses
            })
            .await;
        if refused {
            return Err(TrafficError::Rejected { command: "nginx -t".into(), detail: "refused by the test".into() });
        }
        self.call("traffic.reload", true, |s| {
            let loaded = s.file.clone();
            match s.mode {
                DriverMode::Honest => s.route_to(loaded),
                DriverMode::NoOp => {}
                DriverMode::WrongColor => {
                    let wrong = loaded.map(|u| s.upstream_of(u.color.other()));
                    s.route_to(wrong);
                }
                DriverMode::Slow(after) => s.pending = Some((loaded, after)),
            }
        })
        .await;
        Ok(())
    }

    async fn routed(&self) -> Result<Option<Upstream>, TrafficError> {
        Ok(self
            .call("traffic.routed", false, |s| {
                if let Some((to, left)) = s.pending.take() {
                    if left == 0 {
                        s.route_to(to);
                    } else {
                        s.pending = Some((to, left - 1));
                    }
                }
                s.running.clone()
            })
            .await)
    }

    fn proves(&self) -> bool {
        true
    }
}
