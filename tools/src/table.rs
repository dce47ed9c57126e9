//! Aligned text tables for tasctl: a header row, then rows; columns as wide as their
//! widest cell, two spaces apart; numbers right-aligned, text left-aligned; no trailing
//! spaces.

/// How a column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text.
    Left,
    /// Numbers.
    Right,
}

/// A table being built.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(columns: &[(&str, Align)]) -> Table {
        Table {
            header: columns.iter().map(|(h, a)| (h.to_string(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    /// Add a row (missing cells are empty, extra cells are ignored).
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut r: Vec<String> = cells
            .into_iter()
            .map(Into::into)
            .take(self.header.len())
            .collect();
        r.resize(self.header.len(), String::new());
        self.rows.push(r);
    }

    /// Rows so far.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True if there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, each ending in '\n'.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r[i].chars().count())
                    .chain([self.header[i].0.chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let line = |cells: Vec<&str>, out: &mut String| {
            let mut l = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i > 0 {
                    l.push_str("  ");
                }
                let pad = widths[i] - c.chars().count();
                match self.header[i].1 {
                    Align::Left => {
                        l.push_str(c);
                        l.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        l.extend(std::iter::repeat_n(' ', pad));
                        l.push_str(c);
                    }
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(
            self.header.iter().map(|(h, _)| h.as_str()).collect(),
            &mut out,
        );
        for r in &self.rows {
            line(r.iter().map(String::as_str).collect(), &mut out);
        }
        out
    }
}

/// Split a rendered table back into rows of cells (for tests and scripts): cells are
/// separated by two or more spaces, so no cell may contain two spaces in a row.
pub fn parse(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut cells = Vec::new();
            let mut cur = String::new();
            let mut spaces = 0;
            for ch in l.trim_start().chars() {
                if ch == ' ' {
                    spaces += 1;
                    continue;
                }
                if spaces >= 2 && !cur.is_empty() {
                    cells.push(std::mem::take(&mut cur));
                } else if spaces == 1 {
                    cur.push(' ');
                }
                spaces = 0;
                cur.push(ch);
            }
            if !cur.is_empty() {
                cells.push(cur);
            }
            cells
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_text_left_and_numbers_right() {
        let mut t = Table::new(&[
            ("STATE", Align::Left),
            ("REMOTE", Align::Left),
            ("RX", Align::Right),
        ]);
        t.row(["ESTABLISHED", "10.77.0.2:40000", "1000000"]);
        t.row(["SYN-SENT", "10.0.0.1:7", "0"]);
        assert_eq!(
            t.render(),
            "STATE        REMOTE                RX\n\
             ESTABLISHED  10.77.0.2:40000  1000000\n\
             SYN-SENT     10.0.0.1:7             0\n"
        );
    }

    #[test]
    fn short_rows_pad_and_parse_round_trips() {
        let mut t = Table::new(&[("A", Align::Left), ("B", Align::Right), ("C", Align::Left)]);
        t.row(["x"]);
        t.row(["long value", "12", "z"]);
        let text = t.render();
        assert!(
            text.lines().all(|l| !l.ends_with(' ')),
            "no trailing spaces:\n{text}"
        );
        assert_eq!(
            parse(&text),
            vec![
                vec!["A", "B", "C"],
                vec!["x"],
                vec!["long value", "12", "z"]
            ]
        );
    }
}
