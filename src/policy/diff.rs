//! `warden policy diff A B`: what changing profile A into B widens and narrows, field by field.
//! Reviewers read this in code review; a widening is what needs a second look.
//!
//! Every field is compared through [`super::fields::FIELDS`], which also gives its direction; this
//! module has no list of its own.

use super::Policy;
use super::fields::{FIELDS, Order, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Direction {
    /// B allows more than A.
    Widens,
    /// B allows less than A.
    Narrows,
    /// A change with no clear direction (timing, presentation).
    Changes,
}

impl Direction {
    pub fn label(self) -> &'static str {
        match self {
            Direction::Widens => "WIDENS",
            Direction::Narrows => "narrows",
            Direction::Changes => "changes",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub direction: Direction,
    pub field: String,
    pub from: String,
    pub to: String,
}

/// Every difference between `a` and `b`, widenings first.
pub fn diff(a: &Policy, b: &Policy) -> Vec<Change> {
    let mut out = Vec::new();
    for field in FIELDS {
        let (va, vb) = ((field.value)(&a.file), (field.value)(&b.file));
        if va == vb {
            continue;
        }
        let change = |direction, from: String, to: String| Change { direction, field: field.name.to_string(), from, to };
        match (&va, &vb, field.order) {
            (Value::Set(sa), Value::Set(sb), order) => {
                let (added, removed) = match order {
                    Order::AddIsWider => (Direction::Widens, Direction::Narrows),
                    _ => (Direction::Changes, Direction::Changes),
                };
                for x in sb.difference(sa) {
                    out.push(change(added, "-".into(), x.clone()));
                }
                for x in sa.difference(sb) {
                    out.push(change(removed, x.clone(), "-".into()));
                }
            }
            (Value::Num(x), Value::Num(y), Order::MoreIsWider) => {
                out.push(change(if y > x { Direction::Widens } else { Direction::Narrows }, va.to_string(), vb.to_string()));
            }
            (Value::Text(x), Value::Text(y), Order::Ranked(ranks)) => {
                let rank = |v: &str| ranks.iter().position(|r| *r == v);
                let direction = match (rank(x), rank(y)) {
                    (Some(i), Some(j)) if j > i => Direction::Widens,
                    (Some(_), Some(_)) => Direction::Narrows,
                    _ => Direction::Changes,
                };
                out.push(change(direction, va.to_string(), vb.to_string()));
            }
            _ => out.push(change(Direction::Changes, va.to_string(), vb.to_string())),
        }
    }
    out.sort_by_key(|c| c.direction);
    out
}
