//! Shared helpers of Duraplane's command-line tools.
