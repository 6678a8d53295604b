"""ftcli"""
