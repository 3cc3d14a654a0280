//! The two CMSDK APB UARTs of the MPS2 AN385: polled, one byte at a time. This is the only
//! module with `unsafe`: volatile access to the UART registers.

/// UART0: the low side (receive only).
pub const LOW_SIDE: usize = 0x4000_4000;
/// UART1: the high side (transmit only).
pub const HIGH_SIDE: usize = 0x4000_5000;

const DATA: usize = 0x000;
const STATE: usize = 0x004;
const CTRL: usize = 0x008;
const BAUDDIV: usize = 0x010;

const STATE_TX_FULL: u32 = 1 << 0;
const STATE_RX_FULL: u32 = 1 << 1;
const CTRL_TX_ENABLE: u32 = 1 << 0;
const CTRL_RX_ENABLE: u32 = 1 << 1;

/// One UART register block.
pub struct Uart {
    base: usize,
}

impl Uart {
    /// The UART at `LOW_SIDE` or `HIGH_SIDE`.
    pub const fn at(base: usize) -> Self {
        Uart { base }
    }

    #[allow(unsafe_code)]
    fn read(&self, offset: usize) -> u32 {
        // SAFETY: `base` is one of the two CMSDK APB UART blocks of the AN385 memory map and
        // `offset` one of the 32-bit registers defined above, so the address is valid,
        // aligned device memory for the whole program; volatile access does not alias any Rust
        // object, and this program is single-threaded with no interrupt handlers.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    #[allow(unsafe_code)]
    fn write(&self, offset: usize, value: u32) {
        // SAFETY: as in `read`: a valid, aligned UART register, written from the only thread.
        unsafe { core::ptr::write_volatile((self.base + offset) as *mut u32, value) }
    }

    /// Enables the receiver only (the low side never transmits).
    pub fn enable_rx(&self, bauddiv: u32) {
        self.write(BAUDDIV, bauddiv.max(16));
        self.write(CTRL, CTRL_RX_ENABLE);
    }

    /// Enables the transmitter only (the high side never receives).
    pub fn enable_tx(&self, bauddiv: u32) {
        self.write(BAUDDIV, bauddiv.max(16));
        self.write(CTRL, CTRL_TX_ENABLE);
    }

    /// The next received byte, if one is waiting.
    pub fn try_read(&self) -> Option<u8> {
        if self.read(STATE) & STATE_RX_FULL != 0 {
            Some((self.read(DATA) & 0xff) as u8)
        } else {
            None
        }
    }

    /// Sends `bytes`, waiting for room in the transmit buffer.
    pub fn write_all(&self, bytes: &[u8]) {
        for b in bytes {
            while self.read(STATE) & STATE_TX_FULL != 0 {}
            self.write(DATA, u32::from(*b));
        }
    }
}
