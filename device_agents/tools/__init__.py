"""Drivers and pure output parsers for native benchmark tools run on devices.

A tool-based runtime pushes the user's own binary (its path is given in the fleet inventory, in
the field its runner's `RuntimeNeeds.tool` names) and parses what it prints; the raw output and
the exact flags are kept with every record, so a number can always be traced back to the text it
came from.
"""
