"""Human approval of high-risk actions: notifying owners, the approval page, the CLI side.

The decision itself (which actions need approval, whether a decision event is valid) lives
in the pure core (`gatepass.core.approval`); this package is the I/O around it.
"""
