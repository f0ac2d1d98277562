//! ccm-twin library.
