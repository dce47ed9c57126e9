//! Redis's glob-style patterns (KEYS, SCAN MATCH, CONFIG GET): `*`, `?`, `[abc]`, `[^a-z]`,
//! and `\` to escape the next byte. Byte-wise, like Redis's `stringmatchlen`.

/// True if `s` matches `pat`. Iterative with one backtracking point (the last `*`), so the
/// time is at most O(len(pat) * len(s)) whatever the pattern.
pub fn matches(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if pat.get(p) == Some(&b'*') {
            while pat.get(p) == Some(&b'*') {
                p += 1;
            }
            star = Some((p, i));
            continue;
        }
        if let Some(len) = match_one(&pat[p.min(pat.len())..], s[i]) {
            p += len;
            i += 1;
            continue;
        }
        match star {
            Some((sp, si)) => {
                p = sp;
                i = si + 1;
                star = Some((sp, si + 1));
            }
            None => return false,
        }
    }
    while pat.get(p) == Some(&b'*') {
        p += 1;
    }
    p == pat.len()
}

/// If the pattern's first element (not `*`) matches byte `c`, its length in the pattern.
fn match_one(pat: &[u8], c: u8) -> Option<usize> {
    match *pat.first()? {
        b'?' => Some(1),
        b'\\' if pat.len() >= 2 => (pat[1] == c).then_some(2),
        b'[' => {
            let mut i = 1;
            let negate = pat.get(1) == Some(&b'^');
            if negate {
                i += 1;
            }
            let mut hit = false;
            loop {
                match pat.get(i) {
                    // Unterminated class: it ends with the pattern.
                    None => break,
                    Some(b'\\') if i + 1 < pat.len() => {
                        hit |= pat[i + 1] == c;
                        i += 2;
                    }
                    Some(b']') => {
                        i += 1;
                        break;
                    }
                    Some(&lo) if pat.get(i + 1) == Some(&b'-') && i + 2 < pat.len() => {
                        let hi = pat[i + 2];
                        let (lo, hi) = if lo > hi { (hi, lo) } else { (lo, hi) };
                        hit |= (lo..=hi).contains(&c);
                        i += 3;
                    }
                    Some(&x) => {
                        hit |= x == c;
                        i += 1;
                    }
                }
            }
            (hit != negate).then_some(i)
        }
        x => (x == c).then_some(1),
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn redis_examples() {
        let yes = [
            ("*", ""),
            ("*", "abc"),
            ("h?llo", "hello"),
            ("h*llo", "hllo"),
            ("h*llo", "heeeello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("h[b-a]llo", "hallo"),
            ("key:*:x", "key:12:x"),
            ("a\\*b", "a*b"),
            ("[\\]]", "]"),
            ("user:??", "user:42"),
        ];
        for (p, s) in yes {
            assert!(matches(p.as_bytes(), s.as_bytes()), "{p} should match {s}");
        }
        let no = [
            ("h?llo", "hllo"),
            ("h[ae]llo", "hillo"),
            ("h[^e]llo", "hello"),
            ("a\\*b", "axb"),
            ("abc", "abcd"),
            ("abc*", "ab"),
            ("", "a"),
        ];
        for (p, s) in no {
            assert!(!matches(p.as_bytes(), s.as_bytes()), "{p} should not match {s}");
        }
    }

    #[test]
    fn pathological_pattern_terminates() {
        let pat = "a*".repeat(30) + "b";
        let s = "a".repeat(40);
        assert!(!matches(pat.as_bytes(), s.as_bytes()));
    }
}
