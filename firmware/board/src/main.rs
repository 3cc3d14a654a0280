//! Board glue for the Sluice protocol break on an MPS2 AN385 (Cortex-M3): bytes from the
//! low-side UART0 go through `sluice_firmware::Relay`; what it emits goes out on UART1.
//! Everything but the UART registers is the host-tested `sluice-firmware` crate.
//!
//! Polled UARTs are enough in QEMU, whose serial back ends wait for the guest; a board on real
//! wires needs the low-side UART on DMA or interrupts so no byte is lost while the high side
//! is written (see firmware/README.md).

#![no_std]
#![no_main]
#![deny(unsafe_code)]

mod uart;

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::entry;
use panic_halt as _;
use sluice_firmware::relay::{buffer_for, Relay, RelayConfig};
use sluice_protocol::time::Instant;
use sluice_protocol::wire::LinkKey;

include!(concat!(env!("OUT_DIR"), "/link_key.rs"));

/// Largest frame relayed (the serial default is 1024; jumbo serial frames up to this).
const MAX_FRAME: usize = 2048;
const BUFFER: usize = buffer_for(MAX_FRAME);
/// Core clock of the AN385 in QEMU and on the FPGA board.
const CORE_HZ: u64 = 25_000_000;
/// 115 200 baud at 25 MHz (the CMSDK UART divides the APB clock).
const BAUDDIV: u32 = 217;

/// Microseconds since boot from the 24-bit SysTick down-counter; `now` must be called at
/// least every 2^24 cycles (0.67 s), which the main loop does.
struct Clock {
    syst: cortex_m::peripheral::SYST,
    last: u32,
    ticks: u64,
}

impl Clock {
    fn new(mut syst: cortex_m::peripheral::SYST) -> Self {
        syst.set_clock_source(SystClkSource::Core);
        syst.set_reload(0x00ff_ffff);
        syst.clear_current();
        syst.enable_counter();
        let last = cortex_m::peripheral::SYST::get_current();
        Clock {
            syst,
            last,
            ticks: 0,
        }
    }

    fn now(&mut self) -> Instant {
        let current = cortex_m::peripheral::SYST::get_current();
        self.ticks += u64::from(self.last.wrapping_sub(current) & 0x00ff_ffff);
        self.last = current;
        let _ = &self.syst;
        Instant::from_micros(self.ticks * 1_000_000 / CORE_HZ)
    }
}

#[entry]
fn main() -> ! {
    let Some(peripherals) = cortex_m::Peripherals::take() else {
        loop {
            cortex_m::asm::wfi();
        }
    };
    let mut clock = Clock::new(peripherals.SYST);
    let low = uart::Uart::at(uart::LOW_SIDE);
    let high = uart::Uart::at(uart::HIGH_SIDE);
    low.enable_rx(BAUDDIV);
    high.enable_tx(BAUDDIV);

    let key = LINK_KEY.map(|k| LinkKey::new(&k));
    let mut relay = Relay::<BUFFER>::new(RelayConfig::default(), key, clock.now());
    let mut chunk = [0u8; 64];
    loop {
        let mut n = 0;
        while n < chunk.len() {
            match low.try_read() {
                Some(b) => {
                    chunk[n] = b;
                    n += 1;
                }
                None => break,
            }
        }
        let now = clock.now();
        if n > 0 {
            relay.feed(now, &chunk[..n], &mut |bytes| high.write_all(bytes));
        }
        relay.poll_status(now, &mut |bytes| high.write_all(bytes));
    }
}
