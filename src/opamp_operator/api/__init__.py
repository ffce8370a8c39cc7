"""Typed models of the custom resources and the CRD generator; imports nothing of ours."""
