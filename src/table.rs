//! Plain-text tables like kubectl's: left-aligned columns three spaces apart (pure).

/// Renders rows under a header with aligned columns.
pub fn table<const N: usize>(header: [&str; N], rows: Vec<[String; N]>) -> String {
    let mut all = vec![header.map(String::from)];
    all.extend(rows);
    let widths: Vec<usize> = (0..N)
        .map(|i| all.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in all {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths[i]))
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn columns_line_up_on_the_widest_cell_and_lines_have_no_trailing_space() {
        let t = table(["A", "LONG HEADER"], vec![["wide cell".into(), "x".into()]]);
        assert_eq!(t, "A           LONG HEADER\nwide cell   x\n");
    }
}
