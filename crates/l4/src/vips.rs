//! `--manage-vips IFACE`: rvs puts the virtual addresses on an interface so it can listen on
//! them, as kube-proxy's IPVS mode does with kube-ipvs0, and takes them away again.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::addrs::LocalAddresses;

pub(crate) struct VipManager {
    iface: String,
    /// Addresses rvs added (and so may remove); never ones that were there before.
    added: BTreeSet<IpAddr>,
}

impl VipManager {
    pub fn new(iface: String) -> Self {
        VipManager {
            iface,
            added: BTreeSet::new(),
        }
    }

    fn line(&self, verb: &str, ip: &IpAddr) -> String {
        match ip {
            IpAddr::V4(_) => format!("address {verb} {ip}/32 dev {}", self.iface),
            // nodad: the address is usable at once, not after duplicate address detection.
            IpAddr::V6(_) => format!("address {verb} {ip}/128 dev {} nodad", self.iface),
        }
    }

    /// Adds the addresses of `wanted` that are not local yet.
    pub async fn add(&mut self, wanted: &BTreeSet<IpAddr>) -> Result<(), String> {
        let local = LocalAddresses::read();
        let missing: Vec<IpAddr> = wanted
            .iter()
            .filter(|ip| !self.added.contains(ip) && !local.contains(ip))
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = missing.iter().map(|ip| self.line("add", ip)).collect();
        let result = ip_batch(&lines).await;
        // Some may have gone in even when others failed: trust what the kernel now has.
        let local = LocalAddresses::read();
        for ip in missing {
            if local.contains(&ip) {
                self.added.insert(ip);
            }
        }
        result
    }

    /// Removes the addresses rvs added that are not in `keep`.
    pub async fn retain(&mut self, keep: &BTreeSet<IpAddr>) -> Result<(), String> {
        let stale: Vec<IpAddr> = self.added.difference(keep).copied().collect();
        if stale.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = stale.iter().map(|ip| self.line("del", ip)).collect();
        let result = ip_batch(&lines).await;
        for ip in stale {
            self.added.remove(&ip);
        }
        result
    }
}

/// Runs `ip -force -batch -`: one process for any number of changes.
async fn ip_batch(lines: &[String]) -> Result<(), String> {
    let mut child = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let input = lines.join("\n") + "\n";
        stdin
            .write_all(input.as_bytes())
            .await
            .map_err(|e| format!("ip: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| format!("ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip -batch failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
