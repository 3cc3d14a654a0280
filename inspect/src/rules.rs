//! Name rules (`allow`, `deny`): glob patterns on a file's relative path, and on its bare
//! name for a pattern without `/` (so `*.exe` refuses `a/b/c.exe`).

use globset::{GlobBuilder, GlobMatcher};

/// Compiled name rules, each with the pattern it came from.
#[derive(Debug)]
pub(crate) struct Rules(Vec<(String, Vec<GlobMatcher>)>);

impl Rules {
    pub(crate) fn new(patterns: &[String], what: &str) -> Result<Rules, String> {
        let glob = |p: &str| {
            GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| format!("{what} pattern {p:?}: {e}"))
        };
        let mut rules = Vec::new();
        for p in patterns {
            let mut matchers = vec![glob(p)?];
            // A pattern without `/` also matches the bare name anywhere below.
            if !p.contains('/') {
                matchers.push(glob(&format!("**/{p}"))?);
            }
            rules.push((p.clone(), matchers));
        }
        Ok(Rules(rules))
    }

    /// The first pattern that matches `path`.
    pub(crate) fn first_match(&self, path: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(_, matchers)| matchers.iter().any(|m| m.is_match(path)))
            .map(|(p, _)| p.as_str())
    }
}
