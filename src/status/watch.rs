//! `mpvr status --watch`: a live terminal view (ratatui) of the paths, with
//! each path's RTT and probe-loss history since the view started.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table};
use ratatui::{Frame, Terminal};

use super::{PATH_COLUMNS, Snapshot, human_duration, human_ms, path_cells};

/// Samples of history kept per path.
pub const HISTORY: usize = 240;

/// One path's history.
#[derive(Clone, Debug, Default)]
pub struct PathHistory {
    /// Smoothed RTT per sample, in tenths of a millisecond (0: no estimate).
    pub rtt: VecDeque<u64>,
    /// Probe loss per sample, per mille.
    pub loss: VecDeque<u64>,
}

/// Per-path histories, by "peer N: link -> remote".
#[derive(Clone, Debug, Default)]
pub struct History {
    /// The histories.
    pub paths: BTreeMap<String, PathHistory>,
}

fn key(peer: u32, link: &str, remote: &str) -> String {
    format!("peer {peer}: {link} -> {remote}")
}

impl History {
    /// Add a snapshot's figures.
    pub fn push(&mut self, s: &Snapshot) {
        for p in &s.peers {
            for x in &p.paths {
                let h = self.paths.entry(key(p.id, &x.link, &x.remote)).or_default();
                if h.rtt.len() >= HISTORY {
                    h.rtt.pop_front();
                    h.loss.pop_front();
                }
                h.rtt.push_back(x.rtt_ms.map_or(0, |v| (v * 10.0).round() as u64));
                h.loss.push_back((x.probe_loss * 1000.0).round() as u64);
            }
        }
    }
}

fn state_style(state: &str) -> Style {
    match state {
        "up" => Style::default().fg(Color::Green),
        "degraded" => Style::default().fg(Color::Yellow),
        "suspect" => Style::default().fg(Color::Magenta).add_modifier(Modifier::BOLD),
        _ => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
    }
}

/// Draw one frame: header, path table, per-path history, recent changes.
/// The path table's columns at `width`: every column from [`WIDE`]
/// columns, else the few that fit 80 (which path, its state, for how
/// long, RTT and the two losses).
fn path_columns(width: u16) -> (Vec<usize>, Vec<&'static str>, Vec<Constraint>) {
    if width >= WIDE {
        let widths = vec![
            Constraint::Min(28),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(5),
            Constraint::Length(10),
            Constraint::Length(20),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Min(20),
        ];
        ((0..PATH_COLUMNS.len()).collect(), PATH_COLUMNS.to_vec(), widths)
    } else {
        let widths = vec![
            Constraint::Min(24),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(9),
            Constraint::Length(7),
            Constraint::Length(15),
        ];
        (vec![0, 1, 3, 4, 7, 8], vec!["path", "state", "for", "rtt", "probes", "data 30s in/out"], widths)
    }
}

/// From this many columns the live view shows every path column.
pub const WIDE: u16 = 120;

/// The RTT sparkline's scale: the smallest of these (ms) that holds
/// everything in the history, so the bars keep their meaning from one
/// refresh to the next.
const RTT_SCALES_MS: [u64; 7] = [10, 25, 50, 100, 250, 500, 1000];

fn rtt_scale_ms(history: &[u64]) -> u64 {
    let top = history.iter().max().copied().unwrap_or(0).div_ceil(10);
    RTT_SCALES_MS.iter().copied().find(|s| *s >= top).unwrap_or(*RTT_SCALES_MS.last().expect("not empty"))
}

/// Draw the live view of `s` with history `h`.
pub fn draw(f: &mut Frame<'_>, s: &Snapshot, h: &History) {
    let paths: usize = s.peers.iter().map(|p| p.paths.len()).sum();
    let area = f.area();
    let table_len = paths as u16 + s.peers.len() as u16 + 3;
    // The history gets what is left after the table and three lines of
    // changes: a small terminal shows fewer sparklines, not a squeezed table.
    let spare = area.height.saturating_sub(2 + table_len + 3 + 1);
    let hist_len = (paths as u16 * 2 + 2).min(spare);
    let [head, table, hist, changes, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(table_len),
        Constraint::Length(hist_len),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(area);
    let t = &s.totals;
    let header = vec![
        Line::from(vec![
            Span::styled(format!("mpvr host {}", s.host), Style::default().add_modifier(Modifier::BOLD)),
            Span::raw(format!(
                "  tun {}  policy {}  up {}  probes every {:.0} ms",
                s.tun,
                s.policy,
                human_duration(s.uptime_s),
                s.probe_interval_ms
            )),
        ]),
        Line::from(format!(
            "tun in {} / out {} pkts   duplicates dropped {}   too old {}   auth failed {}",
            t.tun_in.packets, t.tun_out.packets, t.duplicates, t.too_old, t.auth_failed
        )),
    ];
    f.render_widget(Paragraph::new(header), head);

    let (columns, names, widths) = path_columns(area.width);
    let mut rows = Vec::new();
    for p in &s.peers {
        let session = match &p.session {
            Some(ss) => format!("session {} old", human_duration(ss.age_s)),
            None => "no session".to_string(),
        };
        rows.push(
            Row::new(vec![Cell::from(format!("peer {}", p.id)), Cell::from(session)])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        );
        for x in &p.paths {
            let cells = path_cells(x);
            let style = state_style(&x.state);
            rows.push(Row::new(columns.iter().map(|&i| {
                let cell = Cell::from(cells[i].clone());
                if i == 1 { cell.style(style) } else { cell }
            })));
        }
    }
    let header = Row::new(names).style(Style::default().add_modifier(Modifier::UNDERLINED));
    f.render_widget(
        Table::new(rows, widths).header(header).block(Block::default().borders(Borders::ALL).title(" paths ")),
        table,
    );

    let block = Block::default().borders(Borders::ALL).title(" history: rtt (left), probe loss (right) ");
    let inner = block.inner(hist);
    f.render_widget(block, hist);
    let mut y = inner.y;
    for p in &s.peers {
        for x in &p.paths {
            if y + 1 >= inner.y + inner.height {
                break;
            }
            let k = key(p.id, &x.link, &x.remote);
            let half = inner.width / 2;
            let hh = h.paths.get(&k);
            let rtt: Vec<u64> =
                hh.map(|hh| hh.rtt.iter().rev().take(usize::from(half)).rev().copied().collect()).unwrap_or_default();
            let scale = rtt_scale_ms(&rtt);
            let label =
                format!("{k}  rtt {} [0-{scale} ms]  loss {:.1} % [0-100 %]", human_ms(x.rtt_ms), x.probe_loss * 100.0);
            f.render_widget(Paragraph::new(label).style(state_style(&x.state)), Rect::new(inner.x, y, inner.width, 1));
            if let Some(hh) = hh {
                let loss: Vec<u64> = hh.loss.iter().rev().take(usize::from(half)).rev().copied().collect();
                f.render_widget(
                    Sparkline::default().data(&rtt).max(scale * 10).style(Style::default().fg(Color::Cyan)),
                    Rect::new(inner.x, y + 1, half.saturating_sub(1), 1),
                );
                f.render_widget(
                    Sparkline::default().data(&loss).max(1000).style(Style::default().fg(Color::Magenta)),
                    Rect::new(inner.x + half, y + 1, inner.width - half, 1),
                );
            }
            y += 2;
        }
    }

    let lines: Vec<Line> = s
        .changes
        .iter()
        .rev()
        .take(usize::from(changes.height.saturating_sub(2)))
        .map(|c| {
            Line::from(vec![
                Span::raw(format!(
                    "{:>8} ago  {} -> host {} ({}): ",
                    human_duration(c.ago_s),
                    c.link,
                    c.peer,
                    c.remote
                )),
                Span::styled(c.to.clone(), state_style(&c.to)),
                Span::raw(format!(", {}", c.reason)),
            ])
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" recent path changes ")),
        changes,
    );
    f.render_widget(Paragraph::new("q: quit"), foot);
}

/// One frame of the view as text, `width` x `height` cells, one line per
/// row (ratatui's test backend: for tests and bug reports).
pub fn screen(s: &Snapshot, h: &History, width: u16, height: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(width, height)).expect("the test backend cannot fail");
    t.draw(|f| draw(f, s, h)).expect("the test backend cannot fail");
    let buf = t.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

/// Run the live view until `q`, Esc or Ctrl-C: `fetch` every `every`.
/// A failed fetch is shown at the bottom and retried.
pub fn run(mut fetch: impl FnMut() -> anyhow::Result<Snapshot>, every: Duration) -> anyhow::Result<()> {
    let mut snap = fetch()?;
    let mut history = History::default();
    history.push(&snap);
    let mut terminal = ratatui::init();
    let mut error: Option<String> = None;
    let result = (|| -> anyhow::Result<()> {
        let mut next = Instant::now() + every;
        loop {
            terminal.draw(|f| {
                draw(f, &snap, &history);
                if let Some(e) = &error {
                    let a = f.area();
                    let line = Rect::new(a.x, a.y + a.height.saturating_sub(1), a.width, 1);
                    f.render_widget(Paragraph::new(e.as_str()).style(Style::default().fg(Color::Red)), line);
                }
            })?;
            let wait = next.saturating_duration_since(Instant::now());
            if event::poll(wait)? {
                if let Event::Key(k) = event::read()?
                    && k.kind == KeyEventKind::Press
                    && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL)))
                {
                    return Ok(());
                }
                continue;
            }
            next = Instant::now() + every;
            match fetch() {
                Ok(s) => {
                    history.push(&s);
                    snap = s;
                    error = None;
                }
                Err(e) => error = Some(format!("{e:#} (retrying)")),
            }
        }
    })();
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_view_shows_every_path_and_its_state() {
        let s = super::super::build::simulated();
        let mut h = History::default();
        for _ in 0..5 {
            h.push(&s);
        }
        let screen = screen(&s, &h, 160, 30);
        for needle in ["mpvr host 1", "wan1 -> 172.16.0.2:51820", "wan2 -> 172.16.1.2:51820", "down", "probes lost"] {
            assert!(screen.contains(needle), "{needle:?} missing in\n{screen}");
        }
    }

    #[test]
    fn at_80_by_24_every_column_is_readable() {
        let s = super::super::build::simulated();
        let mut h = History::default();
        for _ in 0..5 {
            h.push(&s);
        }
        let screen = screen(&s, &h, 80, 24);
        for needle in [
            "wan1 -> 172.16.0.2:51820",
            "wan2 -> 172.16.1.2:51820",
            "state",
            "rtt",
            "probes",
            "data 30s in/out",
            "down",
            "[0-25 ms]",
            "[0-100 %]",
        ] {
            assert!(screen.contains(needle), "{needle:?} missing at 80x24:\n{screen}");
        }
        assert!(screen.contains(" ms "), "the RTT column is cut at 80x24:\n{screen}");
        assert!(!screen.contains(":5 "), "the path column is cut at 80x24:\n{screen}");
        assert_eq!(rtt_scale_ms(&[0, 95, 240]), 25);
        assert_eq!(rtt_scale_ms(&[12_000]), 1000);
    }
}
