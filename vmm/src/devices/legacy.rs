//! Legacy port-I/O devices: the 8250 UART on COM1, an i8042 that only knows
//! the reset command, and hull's boot-timer port.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;
use crate::VmExit;

/// COM1's ports and IRQ.
pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
/// The i8042's data and command ports.
pub const I8042_DATA: u64 = 0x60;
pub const I8042_COMMAND: u64 = 0x64;
/// hull's boot-timer port: the guest writes a mark byte to it.
pub const BOOT_TIMER_PORT: u64 = 0x440;

const IER_RDI: u8 = 0x01;
const IER_THRI: u8 = 0x02;
const IIR_NONE: u8 = 0x01;
const IIR_THRI: u8 = 0x02;
const IIR_RDI: u8 = 0x04;
/// IIR bits 7:6 while the FIFOs are enabled: what makes Linux's 8250
/// driver see a 16550A (and write 16 bytes per THRE interrupt, not one).
const IIR_FIFO_ENABLED: u8 = 0xc0;
const FCR_FIFO_ENABLE: u8 = 0x01;
const LCR_DLAB: u8 = 0x80;
const LSR_DR: u8 = 0x01;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const MCR_LOOP: u8 = 0x10;
const MSR_DEFAULT: u8 = 0xb0; // DCD, DSR, CTS
const PANIC_MARK: &str = "Kernel panic - not syncing";
const LINE_MAX: usize = 512;
const INPUT_MAX: usize = 64 * 1024;

/// What the guest's console said when it panicked, shared with the VMM.
pub type PanicNote = Arc<Mutex<Option<String>>>;

/// A 16550A UART: enough for Linux's 8250 driver and its console, with
/// transmit interrupts so tty writes from user space flow. Output leaves
/// at once, so the transmit FIFO is always empty; announcing it (FCR, and
/// the FIFO bits in IIR) lets the driver write 16 bytes per interrupt,
/// where a 16450 costs an interrupt and four port exits per byte.
pub struct Serial {
    ier: u8,
    fcr: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    thr_interrupt: bool,
    input: VecDeque<u8>,
    out: Option<Box<dyn Write + Send>>,
    irq: EventFd,
    line: Vec<u8>,
    panic: PanicNote,
    pause_at: Option<(&'static str, PauseHook)>,
}

/// What the serial port calls when the guest writes its pause line.
pub type PauseHook = Arc<dyn Fn() + Send + Sync>;

/// The UART's registers, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialState {
    pub ier: u8,
    /// FIFO control.
    pub fcr: u8,
    pub lcr: u8,
    pub mcr: u8,
    pub scr: u8,
    pub dll: u8,
    pub dlm: u8,
    pub thr_interrupt: bool,
}

impl Serial {
    /// A UART writing guest output to `out` (None: discarded) and raising
    /// `irq`; a console line announcing a kernel panic is kept in `panic`.
    pub fn new(out: Option<Box<dyn Write + Send>>, irq: EventFd, panic: PanicNote) -> Self {
        Serial {
            ier: 0,
            fcr: 0,
            lcr: 0x03,
            mcr: 0x08,
            scr: 0,
            dll: 0x0c,
            dlm: 0,
            thr_interrupt: false,
            input: VecDeque::new(),
            out,
            irq,
            line: Vec::new(),
            panic,
            pause_at: None,
        }
    }

    /// Queues bytes for the guest to read (bounded; the excess is dropped).
    pub fn enqueue_input(&mut self, bytes: &[u8]) {
        let room = INPUT_MAX.saturating_sub(self.input.len());
        self.input.extend(&bytes[..bytes.len().min(room)]);
        self.update_interrupt();
    }

    fn pending(&self) -> u8 {
        if self.ier & IER_RDI != 0 && !self.input.is_empty() {
            IIR_RDI
        } else if self.ier & IER_THRI != 0 && self.thr_interrupt {
            IIR_THRI
        } else {
            IIR_NONE
        }
    }

    fn update_interrupt(&mut self) {
        if self.pending() != IIR_NONE {
            // An edge on the IOAPIC pin; a failed write only delays output.
            let _ = self.irq.write(1);
        }
    }

    fn transmit(&mut self, byte: u8) {
        if self.mcr & MCR_LOOP != 0 {
            self.enqueue_input(&[byte]);
            return;
        }
        if let Some(out) = self.out.as_mut() {
            if out.write_all(&[byte]).is_err() || (byte == b'\n' && out.flush().is_err()) {
                self.out = None; // the reader went away: keep the guest running
            }
        }
        self.watch_for_panic(byte);
    }

    fn watch_for_panic(&mut self, byte: u8) {
        if byte == b'\n' {
            let line = String::from_utf8_lossy(&self.line).trim().to_string();
            if let Some((_, pause)) = self.pause_at.as_ref().filter(|(l, _)| *l == line) {
                pause();
            }
            if line.contains(PANIC_MARK) {
                let mut note = self.panic.lock().unwrap_or_else(|p| p.into_inner());
                note.get_or_insert(line);
            }
            self.line.clear();
        } else if self.line.len() < LINE_MAX {
            self.line.push(byte);
        }
    }

    /// Flushes buffered output (at VM exit).
    /// Calls `pause` when the guest writes the console line `line` (hull-vmm's
    /// snapshot point: the agent's ready line).
    pub fn pause_at_line(&mut self, line: &'static str, pause: PauseHook) {
        self.pause_at = Some((line, pause));
    }

    /// The registers the guest's driver programmed (pending input and
    /// console bookkeeping are not part of it).
    pub fn save(&self) -> SerialState {
        SerialState {
            ier: self.ier,
            fcr: self.fcr,
            lcr: self.lcr,
            mcr: self.mcr,
            scr: self.scr,
            dll: self.dll,
            dlm: self.dlm,
            thr_interrupt: self.thr_interrupt,
        }
    }

    /// Takes the registers of a saved UART and raises its interrupt again
    /// if one was pending.
    pub fn restore(&mut self, s: &SerialState) {
        self.ier = s.ier;
        self.fcr = s.fcr;
        self.lcr = s.lcr;
        self.mcr = s.mcr;
        self.scr = s.scr;
        self.dll = s.dll;
        self.dlm = s.dlm;
        self.thr_interrupt = s.thr_interrupt;
        self.update_interrupt();
    }

    pub fn flush(&mut self) {
        if let Some(out) = self.out.as_mut() {
            let _ = out.flush();
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(first) = data.first_mut() else {
            return;
        };
        let dlab = self.lcr & LCR_DLAB != 0;
        *first = match offset {
            0 if dlab => self.dll,
            1 if dlab => self.dlm,
            0 => {
                let b = self.input.pop_front().unwrap_or(0);
                self.update_interrupt();
                b
            }
            1 => self.ier,
            2 => {
                let iir = self.pending();
                if iir == IIR_THRI {
                    self.thr_interrupt = false;
                }
                if self.fcr & FCR_FIFO_ENABLE != 0 {
                    iir | IIR_FIFO_ENABLED
                } else {
                    iir
                }
            }
            3 => self.lcr,
            4 => self.mcr,
            5 => LSR_THRE | LSR_TEMT | if self.input.is_empty() { 0 } else { LSR_DR },
            6 if self.mcr & MCR_LOOP != 0 => {
                // Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
                let m = self.mcr;
                ((m & 1) << 5) | ((m & 2) << 3) | ((m & 4) << 4) | ((m & 8) << 4)
            }
            6 => MSR_DEFAULT,
            7 => self.scr,
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        let dlab = self.lcr & LCR_DLAB != 0;
        match offset {
            0 if dlab => self.dll = v,
            1 if dlab => self.dlm = v,
            0 => {
                self.transmit(v);
                self.thr_interrupt = true;
                self.update_interrupt();
            }
            1 => {
                let newly_thri = v & IER_THRI != 0 && self.ier & IER_THRI == 0;
                self.ier = v & 0x0f;
                if newly_thri {
                    self.thr_interrupt = true;
                }
                self.update_interrupt();
            }
            // FCR: only the enable bit is kept (bits 1-2 clear FIFOs that
            // are always empty; the trigger level does not matter).
            2 => self.fcr = v & FCR_FIFO_ENABLE,
            3 => self.lcr = v,
            4 => self.mcr = v & 0x1f,
            7 => self.scr = v,
            _ => {}
        }
    }
}

/// An i8042 that reports "nothing to read" and turns the CPU reset command
/// (0xfe on the command port: how `reboot=k` reboots) into a clean VM exit.
pub struct I8042 {
    exit: Sender<VmExit>,
}

impl I8042 {
    pub fn new(exit: Sender<VmExit>) -> Self {
        I8042 { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // On the bus at I8042_DATA..=I8042_COMMAND (0x61 in between is the
        // PIT's speaker port, which KVM's in-kernel PIT answers).
        if offset == I8042_COMMAND - I8042_DATA && data.first() == Some(&0xfe) {
            let _ = self.exit.send(VmExit::Reset);
        }
    }
}

/// One mark written to the boot-timer port.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BootMark {
    pub value: u8,
    pub micros: u128,
}

/// hull's boot-timer port: each byte the guest writes is a mark, timed from
/// the VMM's start; with `report` each is also printed to stderr as
/// `hull-vmm: boot-timer <mark> <microseconds>us`.
pub struct BootTimer {
    start: Instant,
    report: bool,
    marks: Arc<Mutex<Vec<BootMark>>>,
}

impl BootTimer {
    pub fn new(start: Instant, report: bool, marks: Arc<Mutex<Vec<BootMark>>>) -> Self {
        BootTimer {
            start,
            report,
            marks,
        }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        let micros = self.start.elapsed().as_micros();
        log::info!(
            "boot-timer mark {value}: {:.3} ms since VMM start",
            micros as f64 / 1000.0
        );
        if self.report {
            eprintln!("hull-vmm: boot-timer {value} {micros}us");
        }
        let mut marks = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        if marks.len() < 256 {
            marks.push(BootMark { value, micros });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, Sink, EventFd, PanicNote) {
        let sink = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let note = PanicNote::default();
        let s = Serial::new(
            Some(Box::new(sink.clone())),
            irq.try_clone().unwrap(),
            note.clone(),
        );
        (s, sink, irq, note)
    }

    #[test]
    fn output_reaches_the_writer_and_lsr_says_ready() {
        let (mut s, sink, _irq, _) = serial();
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        let mut lsr = [0];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
    }

    #[test]
    fn thr_interrupt_is_raised_and_cleared_by_iir() {
        let (mut s, _sink, irq, _) = serial();
        s.write(1, &[IER_THRI]);
        assert_eq!(irq.read().unwrap(), 1);
        let mut iir = [0];
        s.read(2, &mut iir);
        assert_eq!(iir[0], IIR_THRI);
        s.read(2, &mut iir);
        assert_eq!(iir[0], IIR_NONE);
    }

    #[test]
    fn fifo_enable_shows_in_iir_as_a_16550a() {
        let (mut s, sink, _irq, _) = serial();
        let mut iir = [0];
        s.read(2, &mut iir);
        assert_eq!(iir[0], IIR_NONE, "FIFOs off after reset: a 16450");
        s.write(2, &[0xc7]); // enable, clear both FIFOs, trigger level 14
        s.write(1, &[IER_THRI]);
        s.read(2, &mut iir);
        assert_eq!(iir[0], IIR_FIFO_ENABLED | IIR_THRI);
        // A burst of 16 bytes (what the driver writes per THRE interrupt)
        // all goes out, and LSR still says the transmitter is empty.
        for b in b"0123456789abcdef" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"0123456789abcdef");
        let mut lsr = [0];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        assert_eq!(s.save().fcr, FCR_FIFO_ENABLE);
        s.write(2, &[0]);
        s.read(2, &mut iir);
        assert_eq!(iir[0] & IIR_FIFO_ENABLED, 0);
    }

    #[test]
    fn divisor_latch_does_not_transmit() {
        let (mut s, sink, _irq, _) = serial();
        s.write(3, &[LCR_DLAB]);
        s.write(0, &[0x01]);
        s.write(3, &[0x03]);
        let mut dll = [0];
        s.read(0, &mut dll); // DLAB off again: reads RBR
        assert!(sink.0.lock().unwrap().is_empty());
    }

    #[test]
    fn loopback_and_input() {
        let (mut s, sink, _irq, _) = serial();
        s.write(4, &[MCR_LOOP]);
        s.write(0, b"x");
        assert!(sink.0.lock().unwrap().is_empty());
        let mut b = [0];
        s.read(5, &mut b);
        assert_ne!(b[0] & LSR_DR, 0);
        s.read(0, &mut b);
        assert_eq!(b[0], b'x');
        s.enqueue_input(&vec![0u8; INPUT_MAX + 10]);
        assert_eq!(s.input.len(), INPUT_MAX);
    }

    #[test]
    fn panic_line_is_noted() {
        let (mut s, _sink, _irq, note) = serial();
        for b in b"[ 1.0] Kernel panic - not syncing: Attempted to kill init!\nmore\n" {
            s.write(0, &[*b]);
        }
        let n = note.lock().unwrap().clone().unwrap();
        assert!(n.contains("Attempted to kill init"));
    }

    #[test]
    fn i8042_reset_command_exits() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut k = I8042::new(tx);
        k.write(4, &[0x00]);
        k.write(0, &[0xfe]); // the data port: not a reset
        assert!(rx.try_recv().is_err());
        k.write(4, &[0xfe]);
        assert!(matches!(rx.try_recv(), Ok(VmExit::Reset)));
    }

    #[test]
    fn boot_timer_records_marks() {
        let marks = Arc::new(Mutex::new(Vec::new()));
        let mut t = BootTimer::new(Instant::now(), false, marks.clone());
        t.write(0, &[7]);
        assert_eq!(marks.lock().unwrap()[0].value, 7);
    }
}
