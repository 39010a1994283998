//! Header lists with case-insensitive lookup and edit recording, shared by the views.

/// Headers as (lower-case name, value) pairs.
pub(crate) type HeaderList = Vec<(String, Vec<u8>)>;

/// What a plugin did to one header name.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    /// Replace every value of the name with this one.
    Set(Vec<u8>),
    /// Drop every value of the name.
    Remove,
}

/// A header list as a plugin sees it, plus the changes made to it.
///
/// Names are stored lower-case. The recorded changes keep one entry per name (the last
/// change wins), which matches the host's rule that removals run before sets and a set
/// replaces every value of its name. The list as it stands is the original without the
/// changed names, followed by the names set, in the order they were set; reads compute
/// it instead of keeping a copy, since a hook call copying every header would cost more
/// than the few lookups a plugin makes.
#[derive(Clone, Debug, Default)]
pub(crate) struct Headers {
    original: Vec<(String, Vec<u8>)>,
    changes: Vec<(String, Change)>,
}

impl Headers {
    /// Builds the list from name/value pairs (names are lower-cased in place; the
    /// host's are already lower-case).
    pub(crate) fn new(list: impl IntoIterator<Item = (String, Vec<u8>)>) -> Self {
        let original: Vec<(String, Vec<u8>)> = list
            .into_iter()
            .map(|(mut name, value)| {
                name.make_ascii_lowercase();
                (name, value)
            })
            .collect();
        Self {
            original,
            changes: Vec::new(),
        }
    }

    /// The recorded change to `name` (any case), if any.
    fn change(&self, name: &str) -> Option<&Change> {
        self.changes
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, c)| c)
    }

    /// The first value of `name`, any case.
    pub(crate) fn get(&self, name: &str) -> Option<&[u8]> {
        match self.change(name) {
            Some(Change::Set(value)) => Some(value),
            Some(Change::Remove) => None,
            None => self
                .original
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_slice()),
        }
    }

    /// Every value of `name`, any case, in order.
    pub(crate) fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let (set, original) = match self.change(name) {
            Some(Change::Set(value)) => (Some(value.as_slice()), None),
            Some(Change::Remove) => (None, None),
            None => (None, Some(&self.original)),
        };
        let original = original
            .into_iter()
            .flatten()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice());
        set.into_iter().chain(original)
    }

    /// The first value of `name` as UTF-8 text, if it is valid UTF-8.
    pub(crate) fn get_str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// All headers as (lower-case name, value).
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let kept = self
            .original
            .iter()
            .filter(|(n, _)| self.change(n).is_none())
            .map(|(n, v)| (n.as_str(), v.as_slice()));
        let set = self.changes.iter().filter_map(|(n, c)| match c {
            Change::Set(v) => Some((n.as_str(), v.as_slice())),
            Change::Remove => None,
        });
        kept.chain(set)
    }

    /// Replaces every value of `name` with `value`.
    pub(crate) fn set(&mut self, name: &str, value: &[u8]) {
        self.record(lower(name), Change::Set(value.to_vec()));
    }

    /// Removes every value of `name`.
    pub(crate) fn remove(&mut self, name: &str) {
        self.record(lower(name), Change::Remove);
    }

    fn record(&mut self, name: String, change: Change) {
        self.changes.retain(|(n, _)| *n != name);
        self.changes.push((name, change));
    }

    /// The changes as (sets, removals), leaving out those that change nothing: a removal
    /// of a name the original list did not have, and a set to the single value the
    /// name already had.
    pub(crate) fn edits(&self) -> (HeaderList, Vec<String>) {
        let mut sets = Vec::new();
        let mut removes = Vec::new();
        for (name, change) in &self.changes {
            let mut before = self
                .original
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v);
            match change {
                Change::Set(value) => {
                    let unchanged = before.next() == Some(value) && before.next().is_none();
                    if !unchanged {
                        sets.push((name.clone(), value.clone()));
                    }
                }
                Change::Remove => {
                    if before.next().is_some() {
                        removes.push(name.clone());
                    }
                }
            }
        }
        (sets, removes)
    }
}

/// True if `name` is a valid HTTP header name (a non-empty RFC 9110 token).
pub fn is_valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// True if `value` is a valid HTTP header value: no control characters other than
/// horizontal tab (so no CR, LF or NUL).
pub fn is_valid_header_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// ASCII lower-case copy of a header name.
pub(crate) fn lower(name: &str) -> String {
    name.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> Headers {
        Headers::new(
            list.iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())),
        )
    }

    #[test]
    fn lookup_is_case_insensitive() {
        let h = headers(&[("X-Api-Key", "k1"), ("accept", "a"), ("accept", "b")]);
        assert_eq!(h.get_str("x-api-key"), Some("k1"));
        assert_eq!(h.get_str("X-API-KEY"), Some("k1"));
        assert_eq!(h.get_all("Accept").collect::<Vec<_>>(), vec![b"a", b"b"]);
        assert_eq!(h.get("missing"), None);
    }

    #[test]
    fn header_validity() {
        assert!(is_valid_header_name("x-api-key"));
        assert!(is_valid_header_name("X_Odd.Name~1"));
        assert!(!is_valid_header_name(""));
        assert!(!is_valid_header_name("bad name"));
        assert!(!is_valid_header_name("bad:name"));
        assert!(is_valid_header_value(b"Bearer abc\tdef \xff"));
        assert!(is_valid_header_value(b""));
        assert!(!is_valid_header_value(b"a\r\nb"));
        assert!(!is_valid_header_value(b"a\0"));
    }

    #[test]
    fn no_changes_no_edits() {
        let h = headers(&[("a", "1")]);
        assert_eq!(h.edits(), (vec![], vec![]));
    }

    #[test]
    fn set_replaces_all_values_and_last_change_wins() {
        let mut h = headers(&[("accept", "a"), ("accept", "b")]);
        h.set("Accept", b"c");
        assert_eq!(h.get_all("accept").collect::<Vec<_>>(), vec![b"c"]);
        h.remove("accept");
        h.set("accept", b"d");
        let (sets, removes) = h.edits();
        assert_eq!(sets, vec![("accept".to_string(), b"d".to_vec())]);
        assert!(removes.is_empty());
    }

    #[test]
    fn no_op_edits_are_dropped() {
        let mut h = headers(&[("a", "1"), ("b", "x"), ("b", "y")]);
        h.set("a", b"1"); // same single value: nothing changes
        h.remove("nope"); // never there
        h.set("new", b"v");
        h.remove("new"); // set then removed: nothing to do
        h.set("b", b"x"); // two values become one: a change
        let (sets, removes) = h.edits();
        assert_eq!(sets, vec![("b".to_string(), b"x".to_vec())]);
        assert!(removes.is_empty());
    }

    #[test]
    fn iteration_shows_kept_headers_then_sets_in_order() {
        let mut h = headers(&[("a", "1"), ("b", "2"), ("a", "3"), ("c", "4")]);
        h.set("b", b"x");
        h.set("New", b"n");
        h.remove("c");
        h.set("b", b"y"); // set again: moves after "new"
        let all: Vec<(&str, &[u8])> = h.iter().collect();
        assert_eq!(
            all,
            vec![
                ("a", &b"1"[..]),
                ("a", &b"3"[..]),
                ("new", &b"n"[..]),
                ("b", &b"y"[..]),
            ]
        );
        assert_eq!(h.get_all("A").collect::<Vec<_>>(), vec![b"1", b"3"]);
        assert_eq!(h.get("b"), Some(&b"y"[..]));
        assert_eq!(h.get("c"), None);
    }

    #[test]
    fn removal_of_existing_header_is_recorded() {
        let mut h = headers(&[("x-api-key", "k")]);
        h.remove("X-Api-Key");
        assert_eq!(h.get("x-api-key"), None);
        assert_eq!(h.edits(), (vec![], vec!["x-api-key".to_string()]));
    }
}
