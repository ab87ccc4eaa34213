//! Scheduler names and flags as `ipvsadm` spells them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of the IPVS scheduling algorithms (`net/netfilter/ipvs/ip_vs_<name>.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    Rr,
    Wrr,
    Lc,
    Wlc,
    Lblc,
    Lblcr,
    Dh,
    Sh,
    Sed,
    Nq,
    Fo,
    Ovf,
    Mh,
    Twos,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 14] = [
        Self::Rr,
        Self::Wrr,
        Self::Lc,
        Self::Wlc,
        Self::Lblc,
        Self::Lblcr,
        Self::Dh,
        Self::Sh,
        Self::Sed,
        Self::Nq,
        Self::Fo,
        Self::Ovf,
        Self::Mh,
        Self::Twos,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Rr => "rr",
            Self::Wrr => "wrr",
            Self::Lc => "lc",
            Self::Wlc => "wlc",
            Self::Lblc => "lblc",
            Self::Lblcr => "lblcr",
            Self::Dh => "dh",
            Self::Sh => "sh",
            Self::Sed => "sed",
            Self::Nq => "nq",
            Self::Fo => "fo",
            Self::Ovf => "ovf",
            Self::Mh => "mh",
            Self::Twos => "twos",
        }
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0:?} is not an IPVS scheduler (one of rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh, twos)")]
    UnknownScheduler(String),
    #[error("{0:?} is not a scheduler flag (one of sh-fallback, sh-port, mh-fallback, mh-port)")]
    UnknownFlag(String),
    #[error("flag {flag} does not apply to scheduler {kind}")]
    FlagNotForScheduler {
        flag: &'static str,
        kind: SchedulerKind,
    },
}

impl FromStr for SchedulerKind {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseError::UnknownScheduler(s.to_string()))
    }
}

/// `ipvsadm -b` flags: `sh-fallback`/`mh-fallback` pick another server when the hashed one is
/// unavailable; `sh-port`/`mh-port` add the client's source port to the hash key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SchedulerFlags {
    pub fallback: bool,
    pub port: bool,
}

impl SchedulerFlags {
    /// Parses a comma separated list such as `sh-fallback,sh-port` for `kind`.
    pub fn parse(list: &str, kind: SchedulerKind) -> Result<Self, ParseError> {
        let mut flags = SchedulerFlags::default();
        for raw in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let (flag, family, is_fallback): (&'static str, SchedulerKind, bool) =
                match raw.to_ascii_lowercase().as_str() {
                    "sh-fallback" => ("sh-fallback", SchedulerKind::Sh, true),
                    "sh-port" => ("sh-port", SchedulerKind::Sh, false),
                    "mh-fallback" => ("mh-fallback", SchedulerKind::Mh, true),
                    "mh-port" => ("mh-port", SchedulerKind::Mh, false),
                    _ => return Err(ParseError::UnknownFlag(raw.to_string())),
                };
            if family != kind {
                return Err(ParseError::FlagNotForScheduler { flag, kind });
            }
            if is_fallback {
                flags.fallback = true;
            } else {
                flags.port = true;
            }
        }
        Ok(flags)
    }
}

/// Everything needed to build a scheduler for one virtual service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SchedulerConfig {
    pub kind: SchedulerKind,
    pub flags: SchedulerFlags,
    /// Maglev lookup table size for `mh`; must be prime. IPVS's default is 4093.
    pub mh_table_size: u32,
}

pub const DEFAULT_MH_TABLE_SIZE: u32 = 4093;

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            kind: SchedulerKind::Rr,
            flags: SchedulerFlags::default(),
            mh_table_size: DEFAULT_MH_TABLE_SIZE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in SchedulerKind::ALL {
            assert_eq!(k.name().parse::<SchedulerKind>(), Ok(k));
        }
        assert!("wlcx".parse::<SchedulerKind>().is_err());
    }

    #[test]
    fn flags_belong_to_their_scheduler() {
        let f = SchedulerFlags::parse("sh-fallback, sh-port", SchedulerKind::Sh).unwrap();
        assert!(f.fallback && f.port);
        assert_eq!(
            SchedulerFlags::parse("mh-port", SchedulerKind::Sh),
            Err(ParseError::FlagNotForScheduler {
                flag: "mh-port",
                kind: SchedulerKind::Sh
            })
        );
        assert!(matches!(
            SchedulerFlags::parse("sh-bogus", SchedulerKind::Sh),
            Err(ParseError::UnknownFlag(_))
        ));
    }
}
