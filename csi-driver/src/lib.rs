//! wimsey-csi
