"""Embedded calibration photographs (data only); see README.md here for provenance and licences."""
