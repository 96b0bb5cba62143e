//! `services update-traffic`: edits a service's `spec.traffic` the way `gcloud run services
//! update-traffic` does. Percent assignments that add up to less than 100 give the rest to the
//! revisions already serving, in proportion to what they served.

use anyhow::{anyhow, bail, Result};
use skiff_model::{validate_tag, TrafficTarget};

/// What a traffic target points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `latestRevision: true`
    Latest,
    Rev(String),
}

impl Key {
    fn parse(name: &str) -> Key {
        if name == "LATEST" {
            Key::Latest
        } else {
            Key::Rev(name.to_string())
        }
    }

    fn of(t: &TrafficTarget) -> Key {
        match &t.revision_name {
            Some(r) if t.latest_revision != Some(true) => Key::Rev(r.clone()),
            _ => Key::Latest,
        }
    }

    fn target(&self, percent: u32, tag: Option<&str>) -> TrafficTarget {
        let (revision_name, latest_revision) = match self {
            Key::Latest => (None, Some(true)),
            Key::Rev(r) => (Some(r.clone()), None),
        };
        TrafficTarget {
            revision_name,
            latest_revision,
            percent: Some(percent),
            tag: tag.map(String::from),
            url: None,
        }
    }
}

/// The edits one `update-traffic` asks for.
#[derive(Debug, Clone, Default)]
pub struct TrafficEdit {
    pub to_latest: bool,
    pub to_revisions: Vec<(String, u32)>,
    pub to_tags: Vec<(String, u32)>,
    pub update_tags: Vec<(String, String)>,
    pub remove_tags: Vec<String>,
    pub clear_tags: bool,
}

fn pairs(s: &str, flag: &str, shape: &str) -> Result<Vec<(String, String)>> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
                .ok_or_else(|| anyhow!("invalid {flag} item {p:?}: use {shape}"))
        })
        .collect()
}

/// `NAME=PERCENT,...` for `--to-revisions` and `--to-tags`.
pub fn parse_percents(s: &str, flag: &str) -> Result<Vec<(String, u32)>> {
    pairs(s, flag, "NAME=PERCENT,...")?
        .into_iter()
        .map(|(k, v)| match v.trim_end_matches('%').parse::<u32>() {
            Ok(p) if p <= 100 => Ok((k, p)),
            _ => bail!("invalid percent {v:?} for {k} in {flag}: use a whole number from 0 to 100"),
        })
        .collect()
}

/// `TAG=REVISION,...` for `--update-tags`.
pub fn parse_tag_updates(s: &str) -> Result<Vec<(String, String)>> {
    let out = pairs(s, "--update-tags", "TAG=REVISION,...")?;
    for (t, _) in &out {
        validate_tag(t).map_err(|e| anyhow!("{e}"))?;
    }
    Ok(out)
}

pub fn parse_names(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

/// Splits `remaining` among `weights` in proportion, largest remainders first.
fn distribute(remaining: u32, weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<(u32, u64)> = weights
        .iter()
        .map(|w| {
            let n = u64::from(remaining) * u64::from(*w);
            ((n / total) as u32, n % total)
        })
        .collect();
    let mut out: Vec<u32> = exact.iter().map(|(f, _)| *f).collect();
    let mut left = remaining - out.iter().sum::<u32>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|a, b| exact[*b].1.cmp(&exact[*a].1).then(a.cmp(b)));
    for i in order {
        if left == 0 {
            break;
        }
        out[i] += 1;
        left -= 1;
    }
    out
}

/// Applies `edit` to a service's `spec.traffic`. The result lists the serving targets first,
/// then one 0 % target per tag.
pub fn edit_traffic(current: &[TrafficTarget], edit: &TrafficEdit) -> Result<Vec<TrafficTarget>> {
    let mut percents: Vec<(Key, u32)> = Vec::new();
    let mut tags: Vec<(String, Key)> = Vec::new();
    for t in current {
        let key = Key::of(t);
        let p = t.percent.unwrap_or(0);
        if p > 0 {
            match percents.iter_mut().find(|(k, _)| *k == key) {
                Some((_, q)) => *q += p,
                None => percents.push((key.clone(), p)),
            }
        }
        if let Some(tag) = &t.tag {
            tags.retain(|(t, _)| t != tag);
            tags.push((tag.clone(), key));
        }
    }
    if current.is_empty() {
        percents.push((Key::Latest, 100));
    }

    if edit.clear_tags {
        tags.clear();
    }
    tags.retain(|(t, _)| !edit.remove_tags.contains(t));
    for (tag, rev) in &edit.update_tags {
        tags.retain(|(t, _)| t != tag);
        tags.push((tag.clone(), Key::parse(rev)));
    }

    if edit.to_latest {
        percents = vec![(Key::Latest, 100)];
    } else if !edit.to_revisions.is_empty() || !edit.to_tags.is_empty() {
        let mut assigned: Vec<(Key, u32)> = Vec::new();
        let mut assign = |key: Key, p: u32| match assigned.iter_mut().find(|(k, _)| *k == key) {
            Some((_, q)) => *q = p,
            None => assigned.push((key, p)),
        };
        for (rev, p) in &edit.to_revisions {
            assign(Key::parse(rev), *p);
        }
        for (tag, p) in &edit.to_tags {
            let key = tags
                .iter()
                .find(|(t, _)| t == tag)
                .map(|(_, k)| k.clone())
                .ok_or_else(|| {
                    anyhow!("no revision is tagged {tag}: tag one first with --update-tags {tag}=REVISION")
                })?;
            assign(key, *p);
        }
        let sum: u32 = assigned.iter().map(|(_, p)| p).sum();
        if sum > 100 {
            bail!("traffic percentages add up to {sum}: they must add up to 100");
        }
        let others: Vec<(Key, u32)> = percents
            .iter()
            .filter(|(k, p)| *p > 0 && !assigned.iter().any(|(a, _)| a == k))
            .cloned()
            .collect();
        if sum < 100 && others.is_empty() {
            bail!("traffic percentages add up to {sum}: they must add up to 100");
        }
        let shares = if sum < 100 {
            let weights: Vec<u32> = others.iter().map(|(_, p)| *p).collect();
            distribute(100 - sum, &weights)
        } else {
            vec![0; others.len()]
        };
        percents = assigned
            .into_iter()
            .chain(others.into_iter().zip(shares).map(|((k, _), s)| (k, s)))
            .filter(|(_, p)| *p > 0)
            .collect();
    }

    let total: u32 = percents.iter().map(|(_, p)| p).sum();
    if total != 100 {
        bail!("the service's traffic adds up to {total} percent: set it with --to-latest or --to-revisions REVISION=100");
    }
    Ok(percents
        .iter()
        .map(|(k, p)| k.target(*p, None))
        .chain(tags.iter().map(|(t, k)| k.target(0, Some(t))))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Short spelling of a target: `r1=30`, `LATEST=100`, `r1=0#blue`.
    fn t(s: &str) -> TrafficTarget {
        let (body, tag) = match s.split_once('#') {
            Some((b, t)) => (b, Some(t)),
            None => (s, None),
        };
        let (name, p) = body.split_once('=').unwrap();
        Key::parse(name).target(p.parse().unwrap(), tag)
    }

    fn ts(s: &[&str]) -> Vec<TrafficTarget> {
        s.iter().map(|x| t(x)).collect()
    }

    fn edit(f: impl FnOnce(&mut TrafficEdit)) -> TrafficEdit {
        let mut e = TrafficEdit::default();
        f(&mut e);
        e
    }

    fn check(what: &str, current: &[&str], e: TrafficEdit, want: Result<&[&str], &str>) {
        let got = edit_traffic(&ts(current), &e);
        match (got, want) {
            (Ok(g), Ok(w)) => assert_eq!(g, ts(w), "{what}"),
            (Err(g), Err(w)) => {
                assert!(g.to_string().contains(w), "{what}: {g} lacks {w:?}")
            }
            (g, w) => panic!("{what}: got {g:?}, want {w:?}"),
        }
    }

    fn revs(p: &[(&str, u32)]) -> Vec<(String, u32)> {
        p.iter().map(|(r, p)| (r.to_string(), *p)).collect()
    }

    #[test]
    fn edits() {
        check(
            "to latest keeps tags",
            &["r1=100", "r2=0#blue"],
            edit(|e| e.to_latest = true),
            Ok(&["LATEST=100", "r2=0#blue"]),
        );
        check(
            "empty traffic means latest",
            &[],
            edit(|e| e.update_tags = vec![("blue".into(), "r1".into())]),
            Ok(&["LATEST=100", "r1=0#blue"]),
        );
        check(
            "exact split",
            &["LATEST=100"],
            edit(|e| e.to_revisions = revs(&[("r1", 50), ("r2", 50)])),
            Ok(&["r1=50", "r2=50"]),
        );
        check(
            "rest scaled over the others",
            &["r1=40", "r2=60"],
            edit(|e| e.to_revisions = revs(&[("r1", 45)])),
            Ok(&["r1=45", "r2=55"]),
        );
        check(
            "rest split in proportion with rounding",
            &["r1=50", "r2=25", "r3=25"],
            edit(|e| e.to_revisions = revs(&[("r4", 1)])),
            Ok(&["r4=1", "r1=49", "r2=25", "r3=25"]),
        );
        check(
            "LATEST as a revision name",
            &["r1=100"],
            edit(|e| e.to_revisions = revs(&[("LATEST", 10)])),
            Ok(&["LATEST=10", "r1=90"]),
        );
        check(
            "zero drops a revision",
            &["r1=50", "r2=50"],
            edit(|e| e.to_revisions = revs(&[("r1", 0), ("r2", 100)])),
            Ok(&["r2=100"]),
        );
        check(
            "to tags",
            &["r1=100", "r2=0#blue"],
            edit(|e| e.to_tags = revs(&[("blue", 20)])),
            Ok(&["r2=20", "r1=80", "r2=0#blue"]),
        );
        check(
            "tag added and used in one go",
            &["r1=100"],
            edit(|e| {
                e.update_tags = vec![("green".into(), "r2".into())];
                e.to_tags = revs(&[("green", 100)]);
            }),
            Ok(&["r2=100", "r2=0#green"]),
        );
        check(
            "a tag on a serving target is kept",
            &["r1=100#prod"],
            edit(|e| e.update_tags = vec![("blue".into(), "r2".into())]),
            Ok(&["r1=100", "r1=0#prod", "r2=0#blue"]),
        );
        check(
            "retag moves the tag",
            &["r1=100", "r1=0#blue"],
            edit(|e| e.update_tags = vec![("blue".into(), "r2".into())]),
            Ok(&["r1=100", "r2=0#blue"]),
        );
        check(
            "remove tags",
            &["r1=100", "r1=0#a", "r2=0#b"],
            edit(|e| e.remove_tags = vec!["a".into(), "zzz".into()]),
            Ok(&["r1=100", "r2=0#b"]),
        );
        check(
            "clear tags",
            &["r1=100", "r1=0#a", "r2=0#b"],
            edit(|e| e.clear_tags = true),
            Ok(&["r1=100"]),
        );
        check(
            "duplicate targets merge",
            &["r1=30", "r1=70"],
            edit(|e| e.update_tags = vec![("x".into(), "LATEST".into())]),
            Ok(&["r1=100", "LATEST=0#x"]),
        );
        check(
            "over 100",
            &["r1=100"],
            edit(|e| e.to_revisions = revs(&[("r1", 60), ("r2", 60)])),
            Err("add up to 120"),
        );
        check(
            "under 100 with no one to take the rest",
            &["r1=100"],
            edit(|e| e.to_revisions = revs(&[("r1", 60)])),
            Err("add up to 60"),
        );
        check(
            "unknown tag",
            &["r1=100"],
            edit(|e| e.to_tags = revs(&[("nope", 10)])),
            Err("no revision is tagged nope"),
        );
    }

    #[test]
    fn parsing() {
        assert_eq!(
            parse_percents("a=10, b=90%", "--to-revisions").unwrap(),
            revs(&[("a", 10), ("b", 90)])
        );
        for bad in ["a", "a=", "=5", "a=101", "a=-1", "a=x"] {
            assert!(parse_percents(bad, "--to-revisions").is_err(), "{bad}");
        }
        assert_eq!(
            parse_tag_updates("blue=r1,green=LATEST").unwrap(),
            vec![
                ("blue".to_string(), "r1".to_string()),
                ("green".to_string(), "LATEST".to_string())
            ]
        );
        for bad in ["Blue=r1", "a---b=r1", "blue"] {
            assert!(parse_tag_updates(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_names("a, b,,"), vec!["a", "b"]);
    }

    #[test]
    fn distributes() {
        let cases: &[(u32, &[u32], &[u32])] = &[
            (55, &[60], &[55]),
            (99, &[50, 25, 25], &[49, 25, 25]),
            (10, &[1, 1, 1], &[4, 3, 3]),
            (5, &[0, 0], &[0, 0]),
        ];
        for (rem, w, want) in cases {
            assert_eq!(distribute(*rem, w), *want, "{rem} {w:?}");
        }
    }
}
