//! Plain-text tables for the commands' human output.

/// `part / whole`, 0 for an empty whole.
pub(crate) fn fraction(part: usize, whole: usize) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

/// Compares tensor names as people read them: runs of digits by value, so `layers.2`
/// comes before `layers.10`.
pub(crate) fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
                let (da, db) = (digits(a), digits(b));
                let trim = |s: &[u8]| {
                    let zeros = s.iter().take_while(|&&c| c == b'0').count();
                    s[zeros..].to_vec()
                };
                let (na, nb) = (trim(&a[..da]), trim(&b[..db]));
                let order = na.len().cmp(&nb.len()).then_with(|| na.cmp(&nb)).then(da.cmp(&db));
                if order != std::cmp::Ordering::Equal {
                    return order;
                }
                (a, b) = (&a[da..], &b[db..]);
            }
            (Some(x), Some(y)) if x != y => return x.cmp(y),
            _ => (a, b) = (&a[1..], &b[1..]),
        }
    }
}

/// A left-aligned text table.
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Table { header: header.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let width = |cell: &str| cell.chars().count();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        // Padded by hand: `format!`'s width is a u16, and a tensor name may be longer.
        let line = |cells: &[String]| -> String {
            let mut s = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                if i > 0 {
                    s.push_str("  ");
                }
                s.push_str(c);
                s.extend(std::iter::repeat_n(' ', w.saturating_sub(width(c))));
            }
            s.truncate(s.trim_end().len());
            s.push('\n');
            s
        };
        let mut out = line(&self.header);
        out.push_str(&line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>()));
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_naturally() {
        let mut names =
            vec!["layers.10.weight", "layers.2.weight", "layers.1.bias", "a", "layers.02.x"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            ["a", "layers.1.bias", "layers.2.weight", "layers.02.x", "layers.10.weight"]
        );
        assert_eq!(natural_cmp("x9", "x10"), std::cmp::Ordering::Less);
        assert_eq!(natural_cmp("same", "same"), std::cmp::Ordering::Equal);
    }

    #[test]
    fn cells_of_any_length_line_up() {
        let long = "x".repeat(70_000);
        let mut table = Table::new(&["tensor", "n"]);
        table.row(vec![long.clone(), "1".into()]);
        table.row(vec!["é".into(), "22".into()]);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[2], format!("{long}  1"));
        assert_eq!(lines[3], format!("é{}  22", " ".repeat(69_999)));
    }
}
