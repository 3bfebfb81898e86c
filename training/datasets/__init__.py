"""Readers for SYSU-MM01 and RegDB in their official layouts, and the generated cross-modal data set."""
