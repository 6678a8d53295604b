"""Integrations of FlowTracer credit with other trainers.

Each integration lives in its own module and imports its trainer only there, so importing
`ftcli` (or this package) never needs them:

    from ftcli.integrations.trl import FlowTracerGRPOTrainer   # pip install "ftcli[trl]"
"""
