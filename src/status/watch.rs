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
pub fn draw(f: &mut Frame<'_>, s: &Snapshot, h: &History) {
    let paths: usize = s.peers.iter().map(|p| p.paths.len()).sum();
    let [head, table, hist, changes, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(paths as u16 + s.peers.len() as u16 + 3),
        Constraint::Length(paths as u16 * 2 + 2),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
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
            rows.push(Row::new(cells.into_iter().enumerate().map(|(i, c)| {
                let cell = Cell::from(c);
                if i == 1 { cell.style(style) } else { cell }
            })));
        }
    }
    let widths = [
        Constraint::Min(28),
        Constraint::Length(8),
        Constraint::Length(4),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(5),
        Constraint::Length(10),
        Constraint::Length(17),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Min(20),
    ];
    let header = Row::new(PATH_COLUMNS).style(Style::default().add_modifier(Modifier::UNDERLINED));
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
            let label = format!("{k}  rtt {}  loss {:.1} %", human_ms(x.rtt_ms), x.probe_loss * 100.0);
            f.render_widget(Paragraph::new(label).style(state_style(&x.state)), Rect::new(inner.x, y, inner.width, 1));
            if let Some(hh) = h.paths.get(&k) {
                let half = inner.width / 2;
                let rtt: Vec<u64> = hh.rtt.iter().rev().take(usize::from(half)).rev().copied().collect();
                let loss: Vec<u64> = hh.loss.iter().rev().take(usize::from(half)).rev().copied().collect();
                f.render_widget(
                    Sparkline::default().data(&rtt).style(Style::default().fg(Color::Cyan)),
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
}
