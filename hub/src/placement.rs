//! Spoke labels, label selectors, and the choice of a spoke for a spawn that names none.
//!
//! Pure: the caller asks the candidate spokes for `Info` (bounded in time) and hands the
//! answers here. The least-loaded healthy spoke that offers the profile wins: load is the jobs
//! holding or waiting for a slot (`active + pending`), ties go to fewer active jobs, then to
//! the order of the hub's config. Every spoke that was passed over is named with why.

use std::collections::BTreeMap;
use std::fmt;

use mosaic_shared::ids::SpokeId;
use mosaic_shared::pb::federation::v1 as pb;

/// Most labels a spoke or a selector may have.
pub const MAX_LABELS: usize = 16;
const MAX_LABEL_LEN: usize = 63;

/// Labels of a spoke, or a selector (all of whose labels a spoke must have).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(BTreeMap<String, String>);

fn check_part(what: &str, s: &str, may_be_empty: bool) -> Result<(), String> {
    if s.is_empty() {
        return if may_be_empty {
            Ok(())
        } else {
            Err(format!("a label {what} must not be empty"))
        };
    }
    if s.len() > MAX_LABEL_LEN {
        return Err(format!(
            "label {what} {:?} is longer than {MAX_LABEL_LEN} characters",
            s.chars().take(80).collect::<String>()
        ));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
    {
        return Err(format!(
            "label {what} {:?} has a character that is not allowed (use letters, digits, '.', '_', '-', '/')",
            s.chars().take(80).collect::<String>()
        ));
    }
    Ok(())
}

impl Labels {
    /// Checks every key and value: keys 1-63 characters, values 0-63, of letters, digits,
    /// `.`, `_`, `-` and `/`; at most [`MAX_LABELS`].
    pub fn new(labels: impl IntoIterator<Item = (String, String)>) -> Result<Self, String> {
        let map: BTreeMap<String, String> = labels.into_iter().collect();
        if map.len() > MAX_LABELS {
            return Err(format!("at most {MAX_LABELS} labels, not {}", map.len()));
        }
        for (k, v) in &map {
            check_part("key", k, false)?;
            check_part("value", v, true)?;
        }
        Ok(Labels(map))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a spoke with labels `spoke` matches this selector.
    pub fn selects(&self, spoke: &Labels) -> bool {
        self.0.iter().all(|(k, v)| spoke.0.get(k) == Some(v))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        write!(f, "{{{}}}", parts.join(","))
    }
}

/// A candidate's answer to `Info`, or why it gave none.
pub struct Candidate<'a> {
    pub spoke: &'a SpokeId,
    pub info: Result<&'a pb::InfoResponse, String>,
}

/// Why no spoke was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoSpoke {
    /// No configured spoke matches the selector.
    NoMatch,
    /// Some match, but none is healthy and offers the profile: each with why.
    Unsuitable(Vec<(SpokeId, String)>),
}

/// The spoke to run `profile` on, among the candidates (in config order).
pub fn choose(profile: &str, candidates: &[Candidate<'_>]) -> Result<SpokeId, NoSpoke> {
    if candidates.is_empty() {
        return Err(NoSpoke::NoMatch);
    }
    let mut passed = Vec::new();
    let mut best: Option<(&SpokeId, (u64, u64))> = None;
    for c in candidates {
        let info = match &c.info {
            Ok(i) => i,
            Err(why) => {
                passed.push((c.spoke.clone(), why.clone()));
                continue;
            }
        };
        if info.draining {
            passed.push((c.spoke.clone(), "is draining before it stops".to_owned()));
            continue;
        }
        if !info.profiles.iter().any(|p| p == profile) {
            passed.push((c.spoke.clone(), format!("does not offer profile {profile}")));
            continue;
        }
        let q = info.queue.unwrap_or_default();
        let load = (q.active + q.pending, q.active);
        if best.is_none_or(|(_, b)| load < b) {
            best = Some((c.spoke, load));
        }
    }
    best.map(|(s, _)| s.clone())
        .ok_or(NoSpoke::Unsuitable(passed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(profiles: &[&str], active: u64, pending: u64) -> pb::InfoResponse {
        pb::InfoResponse {
            profiles: profiles.iter().map(|p| p.to_string()).collect(),
            queue: Some(pb::QueueCounts {
                active,
                pending,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()))).unwrap()
    }

    #[test]
    fn least_loaded_healthy_spoke_offering_the_profile_wins() {
        let (a, b, c, d) = (
            "a".parse().unwrap(),
            "b".parse().unwrap(),
            "c".parse().unwrap(),
            "d".parse().unwrap(),
        );
        let (ia, ib, ic) = (
            info(&["echo"], 3, 2),
            info(&["echo"], 1, 1),
            info(&["sleep"], 0, 0),
        );
        let cands = [
            Candidate {
                spoke: &a,
                info: Ok(&ia),
            },
            Candidate {
                spoke: &b,
                info: Ok(&ib),
            },
            Candidate {
                spoke: &c,
                info: Ok(&ic),
            },
            Candidate {
                spoke: &d,
                info: Err("spoke d did not answer within 2 s".into()),
            },
        ];
        assert_eq!(choose("echo", &cands), Ok(b.clone()));
        assert_eq!(choose("sleep", &cands), Ok(c.clone()));
        match choose("nope", &cands) {
            Err(NoSpoke::Unsuitable(why)) => {
                assert_eq!(why.len(), 4);
                assert!(why[3].1.contains("did not answer"));
                assert!(why[0].1.contains("does not offer profile nope"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(choose("echo", &[]), Err(NoSpoke::NoMatch));
    }

    #[test]
    fn ties_go_to_fewer_active_then_config_order() {
        let (a, b, c) = (
            "a".parse().unwrap(),
            "b".parse().unwrap(),
            "c".parse().unwrap(),
        );
        let (ia, ib, ic) = (info(&["p"], 2, 0), info(&["p"], 1, 1), info(&["p"], 1, 1));
        let cands = [
            Candidate {
                spoke: &a,
                info: Ok(&ia),
            },
            Candidate {
                spoke: &b,
                info: Ok(&ib),
            },
            Candidate {
                spoke: &c,
                info: Ok(&ic),
            },
        ];
        assert_eq!(choose("p", &cands), Ok(b));
    }

    #[test]
    fn selectors_match_every_label_and_labels_are_checked() {
        let spoke = labels(&[("region", "eu"), ("gpu", "a100")]);
        assert!(labels(&[]).selects(&spoke));
        assert!(labels(&[("region", "eu")]).selects(&spoke));
        assert!(!labels(&[("region", "us")]).selects(&spoke));
        assert!(!labels(&[("region", "eu"), ("zone", "1")]).selects(&spoke));
        assert_eq!(spoke.to_string(), "{gpu=a100,region=eu}");
        assert!(
            Labels::new([("".into(), "x".into())])
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            Labels::new([("a b".into(), "x".into())])
                .unwrap_err()
                .contains("not allowed")
        );
        assert!(
            Labels::new([("k".into(), "x".repeat(64))])
                .unwrap_err()
                .contains("longer")
        );
        assert!(Labels::new((0..17).map(|i| (format!("k{i}"), String::new()))).is_err());
        assert!(Labels::new([("team/ml".into(), "".into())]).is_ok());
    }
}
