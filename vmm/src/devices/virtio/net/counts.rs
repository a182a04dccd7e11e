//! What the queues' work costs the guest, for whoever tunes the data path:
//! per interrupt raised for the rx queue, how many frames went to the guest,
//! how many reads of the tap and used-ring entries it took, and how often
//! the guest kicked each queue. Off unless this module's debug log is on
//! (`RUST_LOG=hull_vmm::devices::virtio::net=debug`); then a line every
//! [`PERIOD`] of activity and one when the device goes, e.g.
//!
//! ```text
//! virtio-net over 1.0 s: rx 812 frames, 61 interrupts (13.3 frames, 14.1 tap reads, 13.3 used entries each), 40 kicks, 12 waits for buffers; tx 300 chains, 20 interrupts, 280 kicks
//! ```

use std::time::{Duration, Instant};

/// How often a line is logged while frames move.
pub const PERIOD: Duration = Duration::from_secs(1);

#[derive(Default, Clone, Copy)]
pub(super) struct Counts {
    pub rx_frames: u64,
    /// Interrupts raised with rx buffers among the used ones.
    pub rx_irqs: u64,
    /// readv calls on the tap, the one that finds it empty included.
    pub tap_reads: u64,
    /// Rx chains returned used (each one a used-ring entry).
    pub rx_used: u64,
    /// Kicks of the rx queue (the guest added buffers and was asked to say).
    pub rx_kicks: u64,
    /// Times the device ran out of rx buffers and asked for a kick.
    pub rx_waits: u64,
    pub tx_chains: u64,
    /// Interrupts raised for tx buffers alone.
    pub tx_irqs: u64,
    pub tx_kicks: u64,
}

/// [`Counts`] with the period they cover; counting only when logged.
pub(super) struct Meter {
    enabled: bool,
    pub c: Counts,
    since: Option<Instant>,
}

impl Default for Meter {
    fn default() -> Meter {
        Meter {
            enabled: log::log_enabled!(log::Level::Debug),
            c: Counts::default(),
            since: None,
        }
    }
}

impl Meter {
    /// Logs a line once a period is over (called after each wake-up).
    pub fn tick(&mut self) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        let over = now.saturating_duration_since(since);
        if over >= PERIOD {
            self.flush(over);
            self.since = Some(now);
        }
    }

    /// Logs what was counted since the last line, if anything.
    pub fn flush(&mut self, over: Duration) {
        let c = std::mem::take(&mut self.c);
        if !self.enabled || (c.rx_frames == 0 && c.tx_chains == 0) {
            return;
        }
        log::debug!("{}", line(&c, over));
    }

    /// The time since the last line.
    pub fn elapsed(&self) -> Duration {
        self.since.map_or(Duration::ZERO, |s| s.elapsed())
    }
}

fn line(c: &Counts, over: Duration) -> String {
    let per = |n: u64| n as f64 / c.rx_irqs.max(1) as f64;
    format!(
        "virtio-net over {:.1} s: rx {} frames, {} interrupts ({:.1} frames, {:.1} tap reads, \
         {:.1} used entries each), {} kicks, {} waits for buffers; tx {} chains, {} interrupts, \
         {} kicks",
        over.as_secs_f64(),
        c.rx_frames,
        c.rx_irqs,
        per(c.rx_frames),
        per(c.tap_reads),
        per(c.rx_used),
        c.rx_kicks,
        c.rx_waits,
        c.tx_chains,
        c.tx_irqs,
        c.tx_kicks,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_per_interrupt_figures() {
        let c = Counts {
            rx_frames: 20,
            rx_irqs: 4,
            tap_reads: 24,
            rx_used: 40,
            rx_kicks: 3,
            rx_waits: 2,
            tx_chains: 7,
            tx_irqs: 1,
            tx_kicks: 5,
        };
        assert_eq!(
            line(&c, Duration::from_millis(1500)),
            "virtio-net over 1.5 s: rx 20 frames, 4 interrupts (5.0 frames, 6.0 tap reads, \
             10.0 used entries each), 3 kicks, 2 waits for buffers; tx 7 chains, 1 interrupts, \
             5 kicks"
        );
    }
}
