"""Tests of the shipped Apache front (apache/) against a real Apache and real vend processes."""
