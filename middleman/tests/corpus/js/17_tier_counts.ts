const tierCounts: Partial<Record<keyof typeof Tier, number>> = {};
for (const [tier, members] of tiers) {
  tierCounts[Tier[tier] as keyof typeof Tier] = members.length;
}
console.table(tierCounts);
