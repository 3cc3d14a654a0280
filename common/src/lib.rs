//! Host-side pieces shared by sluice-send and sluice-recv.
