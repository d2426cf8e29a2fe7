//! Where a node sits in a YAML text: the line and column of the key or value at a path such as
//! `workloads[1].name`, read by the parser that deserialized the text, so an error found after
//! deserializing (a duplicate name, an unknown profile) points at it, never into a comment.
//!
//! How: the text is deserialized again by a visitor that walks down the path and fails with a
//! private message at the node; serde_yaml_ng stamps an error raised while a node is visited
//! with that node's position.
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step down a YAML document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The value of this key in a mapping.
    Key(String),
    /// This element (0-based) of a sequence.
    Index(usize),
}

impl From<&str> for Step {
    fn from(key: &str) -> Self {
        Self::Key(key.to_owned())
    }
}

impl From<String> for Step {
    fn from(key: String) -> Self {
        Self::Key(key)
    }
}

impl From<usize> for Step {
    fn from(index: usize) -> Self {
        Self::Index(index)
    }
}

/// A path from the document's root, built with [`yaml_path!`](crate::yaml_path).
pub type Path = Vec<Step>;

/// Builds a [`Path`]: `yaml_path!["workloads", 1, "name"]`.
#[macro_export]
macro_rules! yaml_path {
    ($($step:expr),* $(,)?) => {
        vec![$($crate::config::locate::Step::from($step)),*]
    };
}

/// Which part of the node at the end of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    /// The key whose value it is (`name` in `name: x`); the value when the path ends with an
    /// index.
    Key,
    /// The value itself.
    Value,
}

/// 1-based line and column of the node at `path`, or of its nearest ancestor the text has
/// (an error about a default points at the section it belongs in); `None` when not even the
/// first step is there.
pub fn locate(text: &str, path: &[Step], point: Point) -> Option<(usize, usize)> {
    (1..=path.len())
        .rev()
        .find_map(|len| locate_exact(text, &path[..len], point))
}

/// The exact node, or `None`.
pub fn locate_exact(text: &str, path: &[Step], point: Point) -> Option<(usize, usize)> {
    let seek = Seek { path, point };
    match seek.deserialize(serde_yaml_ng::Deserializer::from_str(text)) {
        // The message carries the path before it (`listen.ipv4: ...`).
        Err(e) if e.to_string().contains(HERE) => e.location().map(|l| (l.line(), l.column())),
        _ => None,
    }
}

/// The message of the error that marks the node; never one serde or the YAML parser writes.
const HERE: &str = "\u{0}pgwarden: here";

fn here<E: de::Error>() -> E {
    E::custom(HERE)
}

/// Walks down `path`; at its end, fails while visiting the node.
struct Seek<'p> {
    path: &'p [Step],
    point: Point,
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.path.is_empty() {
            d.deserialize_any(Here)
        } else {
            d.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Step::Key(want), rest)) = self.path.split_first() else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        let mark_key = rest.is_empty() && self.point == Point::Key;
        while let Some(found) = map.next_key_seed(KeyIs { want, mark_key })? {
            if found {
                map.next_value_seed(Seek {
                    path: rest,
                    point: self.point,
                })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let want = match self.path.first() {
            Some(Step::Index(i)) => Some(*i),
            _ => None,
        };
        let mut index = 0;
        loop {
            let more = if want == Some(index) {
                seq.next_element_seed(Seek {
                    path: &self.path[1..],
                    point: self.point,
                })?
                .is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }

    // A scalar where the path goes on: not there.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// Reads a mapping key: whether it is `want` (numbers and booleans compared as written);
/// fails on it when `mark_key`.
struct KeyIs<'w> {
    want: &'w str,
    mark_key: bool,
}

impl KeyIs<'_> {
    fn is<E: de::Error>(&self, key: &str) -> Result<bool, E> {
        match key == self.want {
            true if self.mark_key => Err(here()),
            same => Ok(same),
        }
    }
}

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        self.is(key)
    }
    fn visit_bool<E: de::Error>(self, key: bool) -> Result<bool, E> {
        self.is(&key.to_string())
    }
    fn visit_i64<E: de::Error>(self, key: i64) -> Result<bool, E> {
        self.is(&key.to_string())
    }
    fn visit_u64<E: de::Error>(self, key: u64) -> Result<bool, E> {
        self.is(&key.to_string())
    }
    fn visit_f64<E: de::Error>(self, key: f64) -> Result<bool, E> {
        self.is(&key.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

/// Fails on whatever node it is given.
struct Here;

impl<'de> Visitor<'de> for Here {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(here())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(here())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(here())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(here())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(here())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(here())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(here())
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(here())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(here())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# workloads: a comment that names keys below
listen:
  ipv4: 127.0.0.1:1 # name: also here
workloads:
  - name: a
    cgroup: [x, 'y']
  - name: \"b\"
    policy: p.yaml
7: seven
";

    fn at(path: Path, point: Point) -> Option<(usize, usize)> {
        locate_exact(TEXT, &path, point)
    }

    fn exact(text: &str, path: Path, point: Point) -> Option<(usize, usize)> {
        locate_exact(text, &path, point)
    }

    fn near(text: &str, path: Path, point: Point) -> Option<(usize, usize)> {
        locate(text, &path, point)
    }

    #[test]
    fn keys_and_values_by_path() {
        assert_eq!(at(yaml_path!["listen"], Point::Key), Some((2, 1)));
        assert_eq!(at(yaml_path!["listen"], Point::Value), Some((3, 3)));
        assert_eq!(at(yaml_path!["listen", "ipv4"], Point::Value), Some((3, 9)));
        assert_eq!(
            at(yaml_path!["workloads", 1, "name"], Point::Key),
            Some((7, 5))
        );
        assert_eq!(
            at(yaml_path!["workloads", 1, "name"], Point::Value),
            Some((7, 11))
        );
        assert_eq!(
            at(yaml_path!["workloads", 0, "cgroup", 1], Point::Key),
            Some((6, 17))
        );
        assert_eq!(at(yaml_path!["7"], Point::Key), Some((9, 1)));
    }

    #[test]
    fn missing_nodes() {
        assert_eq!(at(yaml_path!["workloads", 2, "name"], Point::Key), None);
        assert_eq!(at(yaml_path!["listen", "ipv6"], Point::Key), None);
        assert_eq!(at(yaml_path!["listen", "ipv4", "x"], Point::Key), None);
        assert_eq!(at(yaml_path!["nope"], Point::Key), None);
        // The nearest ancestor instead.
        assert_eq!(
            near(TEXT, yaml_path!["listen", "ipv6"], Point::Key),
            Some((2, 1))
        );
        assert_eq!(near(TEXT, yaml_path!["audit", "path"], Point::Key), None);
        assert_eq!(near("", yaml_path!["a"], Point::Key), None);
        // Nodes before a syntax error are found (callers only locate in text that parsed).
        assert_eq!(near("a: [\n", yaml_path!["a"], Point::Key), Some((1, 1)));
        assert_eq!(exact("a: [\n", yaml_path!["a", 0], Point::Key), None);
    }
}
